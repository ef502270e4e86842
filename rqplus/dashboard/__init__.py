"""The rqplus dashboard: rq-dashboard mounted and secured, plus rqplus' own views.

Usage::

    from rqplus.dashboard import create_app, serve
    serve(create_app(), "127.0.0.1", 9181)      # what `rqplus dashboard` runs

Layout: :mod:`~rqplus.dashboard.app` (the Flask app and its server), :mod:`.security` (login,
CSRF, same-origin, CSP), :mod:`.rqdashboard` (rq-dashboard's gaps closed), :mod:`.payloads` (job
data loaded without unpickling foreign code, secrets masked), :mod:`.actions` (requeue, delete,
empty), :mod:`.views` (rqplus' pages), :mod:`.metrics`, :mod:`.charts`, :mod:`.audit`.
"""

from rqplus.dashboard.app import DashboardConfigError, create_app, make_server, serve
from rqplus.dashboard.security import Credentials, is_loopback

__all__ = ["Credentials", "DashboardConfigError", "create_app", "is_loopback", "make_server", "serve"]
