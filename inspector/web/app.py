"""The review station's Flask application: configuration, security headers, errors, and `serve` on waitress.

Flask (with Flask-WTF's CSRF protection) rather than an async framework: the store is SQLAlchemy's synchronous
engine and every page is one or two short transactions, so threads fit; waitress is a pure-Python production
server (no compiler, Linux and Windows) that serves the app on a thread pool (web.threads).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
from pathlib import Path

from flask import Flask, g, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect

from inspector import __version__
from inspector.config import Config
from inspector.errors import InspectorError, StoreError
from inspector.paths import display_path
from inspector.times import format_age, format_local
from inspector.web import WebError
from inspector.web.users import UserError, UsersFile

log = logging.getLogger("inspector.web")
HERE = Path(__file__).resolve().parent
# Pages: nothing but this server's own scripts, styles and images; no frame, no foreign form target.
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def secret_key(path: Path) -> bytes:
    """The key that signs session cookies: read from its file, made (32 random bytes, mode 0600) the first time.
    Several web servers behind one proxy share the file; a new key logs everyone out."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server made it meanwhile
            return path.read_bytes()
        except OSError as exc:
            raise InspectorError(f"cannot create the session key {path} ({exc.strerror}): make its folder writable "
                                 "for the web server, or set web.secret_key_file") from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
    except OSError as exc:
        raise InspectorError(f"cannot read the session key {path} ({exc.strerror})") from exc
    if len(key) < 16:
        raise InspectorError(f"the session key {path} is shorter than 16 bytes: remove it and start again")
    return key


def static_version() -> str:
    """A digest of the static files: their URLs change with them, so browsers may cache them for long."""
    digest = hashlib.sha256()
    for path in sorted((HERE / "static").iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def create_app(cfg: Config, store) -> Flask:
    """The review station for `cfg` on an open Store (a writer: reviewers record decisions through it)."""
    from inspector.web import auth, media, pages, queue

    app = Flask("inspector.web", root_path=str(HERE))
    app.config.update(
        SECRET_KEY=secret_key(cfg.secret_key_path),
        SESSION_COOKIE_NAME="inspector_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.web.secure_cookies,
        PERMANENT_SESSION_LIFETIME=int(cfg.web.session_hours * 3600),
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its session: a page left open over a shift still works
        MAX_CONTENT_LENGTH=64 * 1024,  # forms only; nothing is uploaded
        SEND_FILE_MAX_AGE_DEFAULT=365 * 86400,  # static files: their URLs carry static_version
    )
    app.extensions["inspector"] = {"cfg": cfg, "store": store, "users": UsersFile(cfg.users_path),
                                   "throttle": auth.LoginThrottle(), "static_version": static_version()}
    CSRFProtect(app)
    app.jinja_env.filters["path"] = display_path
    app.jinja_env.filters["local"] = format_local
    app.jinja_env.filters["basename"] = lambda text: text.rsplit("/", 1)[-1]
    app.jinja_env.filters["age"] = format_age
    app.jinja_env.globals.update(version=__version__, static_v=app.extensions["inspector"]["static_version"])
    for blueprint in (auth.blueprint, queue.blueprint, pages.blueprint, media.blueprint):
        app.register_blueprint(blueprint)

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if response.mimetype == "text/html" or response.status_code >= 400:
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(WebError)
    def web_error(exc: WebError):
        return error_page(exc.status, str(exc))

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return error_page(400, f"This form was refused: {exc.description} The page may be older than your login; "
                          "reload it and try again.")

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError):
        log.warning("database error on %s %s: %s", request.method, request.path, exc)
        return error_page(503, f"The database cannot answer now: {exc}")

    @app.errorhandler(UserError)
    def users_file_error(exc: UserError):
        log.error("users file: %s", exc)
        return error_page(503, "The station's users file cannot be read: the server log says why; an "
                               "administrator fixes it (`inspector user list` on the station).")

    @app.errorhandler(InspectorError)
    def inspector_error(exc: InspectorError):
        return error_page(400, str(exc))

    for status, text in ((404, "There is no such page or record here."),
                         (405, "This address does not take that kind of request."),
                         (413, "The request is too large.")):
        app.register_error_handler(status, lambda exc, s=status, t=text: error_page(s, t))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if getattr(exc, "code", None) and getattr(exc, "description", None):  # any other HTTP error of werkzeug
            return error_page(exc.code, exc.description)  # type: ignore[attr-defined]
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_page(500, f"Unexpected {type(exc).__name__}: the server log has the details.")

    return app


def error_page(status: int, message: str):
    wants_text = request.accept_mimetypes.best == "text/plain" or request.path.startswith("/image/")
    if wants_text:
        return message + "\n", status, {"Content-Type": "text/plain; charset=utf-8"}
    return render_template("error.html", status=status, message=message, user=g.get("user")), status


def serve(cfg: Config, host: str, port: int, ready=None) -> None:
    """Run the review station on waitress until SIGTERM or Ctrl-C; `ready(url)` once it listens."""
    from waitress import create_server

    from inspector.store import open_configured

    with open_configured(cfg, create=False) as store:
        app = create_app(cfg, store)
        try:
            server = create_server(app, host=host, port=port, threads=cfg.web.threads, ident="inspector",
                                   clear_untrusted_proxy_headers=True)
        except OSError as exc:
            raise InspectorError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program (an "
                                 "inspector serve already running?) has it, or the address is not this host's; "
                                 "choose another with --port / --host or web.port / web.host") from exc
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            if ready is not None:
                bound = server.effective_port if hasattr(server, "effective_port") else port
                ready(f"http://{host if ':' not in host else f'[{host}]'}:{bound}/", app)
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.close()


def _stop(signum, frame) -> None:
    raise SystemExit(0)  # waitress's loop closes its sockets on SystemExit
