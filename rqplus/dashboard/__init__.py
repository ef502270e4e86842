"""The rqplus dashboard: rq-dashboard mounted and secured, plus rqplus' own views.

Usage::

    from rqplus.dashboard import create_app, serve
    serve(create_app(), "127.0.0.1", 9181)      # what `rqplus dashboard` runs

Layout: :mod:`~rqplus.dashboard.app` (the Flask app and its server), :mod:`.security` (login,
CSRF, same-origin, CSP), :mod:`.rqdashboard` (rq-dashboard's gaps closed), :mod:`.payloads` (job
data loaded without unpickling foreign code), :mod:`.masking` (secrets hidden), :mod:`.actions` (requeue, delete,
empty), :mod:`.views` (rqplus' pages), :mod:`.metrics`, :mod:`.charts`, :mod:`.audit`.
"""

from rqplus.dashboard.app import DashboardConfigError, Server, create_app, serve
from rqplus.dashboard.security import Credentials, is_loopback

__all__ = ["Credentials", "DashboardConfigError", "Server", "create_app", "is_loopback", "serve"]
