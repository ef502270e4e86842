"""Where the dashboard is secured: who may see it, which requests may change anything, what a
page may run.

* **Closed by default**: every route but the login page needs a user, from the login session or
  from HTTP Basic auth (for scripts). Credentials come from ``RQPLUS_DASHBOARD_USERNAME`` /
  ``RQPLUS_DASHBOARD_PASSWORD`` and are compared in constant time. HTML page views without a
  user are redirected to the login page; everything else answers 401. After 10 failed sign-ins
  (form or Basic auth) from one client address within 5 minutes, that address gets 429.
  A login session lives in Redis too (12 h, bound to the credentials it was opened with): logout
  ends it for good, and a changed password ends every session opened with the old one.
* **Without authentication** (``--no-auth``, loopback only) requests must name a loopback host,
  so a web page whose own host name an attacker points at 127.0.0.1 (DNS rebinding) gets 403.
* **Cross-site safe**: every request that is not GET/HEAD/OPTIONS must carry the session's CSRF
  token (header ``X-CSRFToken``, which rq-dashboard's JavaScript sends from the ``_csrf_token``
  cookie, or form field ``_csrf_token``) and, when the browser names one, an Origin (else
  Referer) of this very host.
* **No injected script runs**: a Content-Security-Policy allows only the dashboard's own script
  files and inline scripts carrying the per-request nonce, so an ``onerror=`` that slipped
  through escaping would still not run; pages cannot be framed.

Usage::

    from rqplus.dashboard.security import Credentials, install
    install(app, Credentials.from_env())          # None: no authentication (--no-auth)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, Response, abort, current_app, g, redirect, render_template, request, session,
                   url_for)
from werkzeug.exceptions import Forbidden

USERNAME_ENV = "RQPLUS_DASHBOARD_USERNAME"
PASSWORD_ENV = "RQPLUS_DASHBOARD_PASSWORD"
#: The cookie rq-dashboard's JavaScript reads the CSRF token from (see its dashboard.js).
CSRF_COOKIE = "_csrf_token"
CSRF_HEADER = "X-CSRFToken"
CSRF_FIELD = "_csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Failed sign-ins (form or Basic auth) per client address, counted in Redis under this key prefix;
#: at :data:`LOGIN_FAILURES_LIMIT` within :data:`LOGIN_FAILURES_WINDOW` seconds of the last one,
#: that address gets 429 until the window passes.
LOGIN_FAILURES_KEY = "rqplus:dashboard:login-failures"
LOGIN_FAILURES_LIMIT = 10
LOGIN_FAILURES_WINDOW = 300
#: The user recorded in the audit log when authentication is off.
ANONYMOUS = "anonymous (--no-auth)"
#: Login sessions: ``SESSION_KEY:<id>`` holds the fingerprint of the credentials it was opened
#: with, for ``SESSION_LIFETIME`` seconds; logout deletes it.
SESSION_KEY = "rqplus:dashboard:session"
SESSION_LIFETIME = 12 * 3600

auth = Blueprint("auth", __name__)


@dataclass(frozen=True)
class Credentials:
    """The one dashboard user."""

    username: str
    password: str

    @classmethod
    def from_env(cls) -> Credentials | None:
        """Credentials from ``$RQPLUS_DASHBOARD_USERNAME`` / ``$RQPLUS_DASHBOARD_PASSWORD``; None unless both are set.

        Usage: ``Credentials.from_env() or exit("set the dashboard credentials")``
        """
        username, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
        return cls(username, password) if username and password else None

    def match(self, username: str | None, password: str | None) -> bool:
        """True when both match; constant time, and both are always compared.

        Usage: ``credentials.match(form["username"], form["password"])``
        """
        user_ok = hmac.compare_digest((username or "").encode(), self.username.encode())
        password_ok = hmac.compare_digest((password or "").encode(), self.password.encode())
        return user_ok & password_ok

    def fingerprint(self, secret_key: str | bytes) -> str:
        """A keyed digest of these credentials: what a login session is bound to.

        Usage: ``credentials.fingerprint(app.secret_key)``
        """
        key = secret_key if isinstance(secret_key, bytes) else secret_key.encode()
        return hmac.new(key, f"{self.username}\0{self.password}".encode(), hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, bracketed or not).

    Usage: ``is_loopback("127.0.0.1")``
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def wants_html() -> bool:
    """True when this request's client accepts HTML (a person's browser, not a script or XHR).

    Usage: ``render_template(...) if wants_html() else jsonify(...)``
    """
    return any(mime == "text/html" for mime, _ in request.accept_mimetypes)


def install(app: Flask, credentials: Credentials | None) -> None:
    """Guard every route of ``app``: authentication (unless ``credentials`` is None), CSRF and
    same-origin checks on state-changing requests, security headers on every response.

    Usage: ``install(app, Credentials("admin", "s3cret"))``
    """
    app.extensions["rqplus.credentials"] = credentials
    app.config.update(SESSION_COOKIE_NAME="rqplus_dashboard_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax")
    app.jinja_env.globals.update(csrf_token=csrf_token, csp_nonce=csp_nonce)
    app.register_blueprint(auth)
    app.before_request(_guard)
    app.after_request(_secure_response)


def current_user() -> str:
    """The user of this request (set by the guard).

    Usage: ``audit.record(redis, current_user(), "requeue", job_id)``
    """
    return g.user


def csrf_token() -> str:
    """This session's CSRF token, created on first use.

    Usage (in a form): ``<input type="hidden" name="_csrf_token" value="{{ csrf_token() }}">``
    """
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csp_nonce() -> str:
    """The nonce this response's inline scripts must carry.

    Usage (in a template): ``<script nonce="{{ csp_nonce() }}">``
    """
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


def _guard() -> Response | None:
    credentials: Credentials | None = app_credentials()
    if credentials is None:
        hostname = urlsplit(f"//{request.host}").hostname or ""
        if not is_loopback(hostname):  # DNS rebinding: a foreign page whose name resolves to us
            raise Forbidden(f"this dashboard runs without authentication and answers only requests to a loopback "
                            f"host name, not {request.host!r}")
        g.user = ANONYMOUS
    elif _session_user(credentials):
        g.user = session["user"]
    elif request.authorization and request.authorization.type == "basic":
        if not _signed_in(credentials, request.authorization.username, request.authorization.password):
            return _unauthenticated()
        g.user = credentials.username
    elif request.endpoint not in ("auth.login",):
        return _unauthenticated()
    if request.method not in SAFE_METHODS:
        _check_same_origin()
        _check_csrf_token()
    return None


def _session_user(credentials: Credentials) -> bool:
    """True when the login session is alive in Redis and bound to the current credentials; a
    session ended or opened with other credentials is cleared."""
    session_id = session.get("sid")
    if not session_id:
        return False
    stored = _connection().get(f"{SESSION_KEY}:{session_id}")
    expected = credentials.fingerprint(current_app.secret_key)
    if stored is not None and hmac.compare_digest(stored, expected.encode()):
        return True
    session.clear()
    return False


def _connection():
    return current_app.extensions["rqplus.dashboard"].connection


def app_credentials() -> Credentials | None:
    """The credentials this app was created with; None when authentication is off.

    Usage: ``if app_credentials() is None: ...  # --no-auth``
    """
    return current_app.extensions["rqplus.credentials"]


def _unauthenticated() -> Response:
    # a person opening a page gets the login form; scripts and XHR get 401 (Basic auth accepted)
    if request.method == "GET" and wants_html():  # next= includes where the app is mounted
        return redirect(url_for("auth.login", next=request.script_root + request.full_path.rstrip("?")))
    return Response("authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="rqplus dashboard"'},
                    mimetype="text/plain")


def _failures_key() -> str:
    return f"{LOGIN_FAILURES_KEY}:{request.remote_addr or '?'}"


def _signed_in(credentials: Credentials, username: str | None, password: str | None) -> bool:
    """True when ``username`` and ``password`` match; raises 429 (right password or not) for a
    client address that failed :data:`LOGIN_FAILURES_LIMIT` times within the window.

    A failure is counted before it is answered, and the count Redis returns for it decides: one
    INCR, so guesses sent at once cannot all pass a check made before any of them is counted.
    """
    connection, key = _connection(), _failures_key()
    matched = credentials.match(username, password)
    if matched:
        failures_before = int(connection.get(key) or 0)
    else:
        # INCR + EXPIRE in one transaction: the window restarts at each failure, so a client that
        # keeps guessing stays refused; plain commands, as Redis 6.2 has them
        with connection.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, LOGIN_FAILURES_WINDOW)
            failures_before = pipe.execute()[0] - 1
    if failures_before >= LOGIN_FAILURES_LIMIT:
        wait = max(connection.ttl(key), 1)
        abort(Response(f"too many failed sign-ins from {request.remote_addr}: try again in {wait} s\n", 429,
                       {"Retry-After": str(wait)}, mimetype="text/plain"))
    return matched


def _check_same_origin() -> None:
    # Browsers send Origin on cross-site POSTs (Referer at worst); clients that send neither are
    # not browsers, and still need the token below.
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is not None and urlsplit(source).netloc != request.host:
        raise Forbidden(f"cross-site request refused: {source!r} is not this dashboard ({request.host})")


def _check_csrf_token() -> None:
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("missing or wrong CSRF token: reload the page (scripts: send the _csrf_token cookie's "
                        "value in the X-CSRFToken header)")


def _secure_response(response: Response) -> Response:
    # rq-dashboard's JavaScript reads the token from this cookie and sends it as X-CSRFToken
    if getattr(g, "user", None) is not None or request.endpoint == "auth.login":
        token = csrf_token()
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, samesite="Strict", httponly=False, path="/")
    # rq-dashboard's underscore templates compile with new Function(), hence 'unsafe-eval'; inline
    # scripts need the nonce, so injected markup (onerror=..., <script>) cannot run
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'self' 'nonce-{csp_nonce()}' 'unsafe-eval'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@auth.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    """The login form; on success a fresh session (new CSRF token) and a redirect to ``next``;
    429 after too many failures from the client's address.

    Usage: ``GET /login?next=/failed``, then ``POST /login`` with username, password, _csrf_token
    """
    credentials = app_credentials()
    target = _local_path(request.values.get("next"))
    if credentials is None or getattr(g, "user", None) is not None:
        return redirect(target)
    error = None
    if request.method == "POST":
        if _signed_in(credentials, request.form.get("username"), request.form.get("password")):
            session.clear()  # no session fixation: the pre-login session and its token are dropped
            session_id = secrets.token_urlsafe(32)
            _connection().set(f"{SESSION_KEY}:{session_id}", credentials.fingerprint(current_app.secret_key),
                              ex=SESSION_LIFETIME)
            session.update(user=credentials.username, sid=session_id)
            return redirect(target)
        error = "Wrong user name or password."
    return render_template("rqplus/login.html", error=error, next=target), 401 if error else 200


@auth.route("/logout", methods=["POST"])
def logout() -> Response:
    """End the session for good, in Redis too (POST with the CSRF token, like every action).

    Usage: ``POST /logout`` with the CSRF token
    """
    if session.get("sid"):
        _connection().delete(f"{SESSION_KEY}:{session['sid']}")
    session.clear()
    return redirect(url_for("auth.login"))


def _local_path(target: str | None) -> str:
    # only a path on this site: "//evil.example" or "https://..." would be an open redirect, and so
    # would "/\t/evil.example" (browsers drop tabs and newlines from URLs) or "/\\evil.example"
    if (not target or not target.startswith("/") or target.startswith("//")
            or any(char == "\\" or ord(char) <= 0x20 or ord(char) == 0x7F for char in target)):
        return url_for("rqplus.overview")
    return target

