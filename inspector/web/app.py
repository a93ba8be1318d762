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
from inspector.base.config import Config
from inspector.base.errors import InspectorError, StoreError
from inspector.base.paths import display_path
from inspector.base.times import format_age, format_local
from inspector.web import WebError
from inspector.web.auth import API_ROOT, audit, note_forwarding
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
    from inspector.web import api, auth, media, metrics, pages, queue
    from inspector.web.tokens import TokensFile, tokens_path

    app = Flask("inspector.web", root_path=str(HERE))
    app.wsgi_app = note_forwarding(app.wsgi_app)  # type: ignore[method-assign]
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
    app.session_interface = auth.PagesOnlySessions()
    app.extensions["inspector"] = {"cfg": cfg, "store": store, "users": UsersFile(cfg.users_path),
                                   "tokens": TokensFile(tokens_path(cfg)), "throttle": auth.LoginThrottle(),
                                   "static_version": static_version(), "metrics": metrics.metrics_registry(store)}
    app.extensions["inspector"]["hosts"] = allowed_hosts(cfg, cfg.web.host)  # serve's --host replaces it

    @app.before_request
    def refuse_other_hosts():
        host = request.headers.get("Host", "")
        if not host_allowed(host, app.extensions["inspector"]["hosts"]):
            raise WebError(400, f"This station does not answer to the host name {host[:100]!r}: use its own "
                                "address, or an administrator adds the name to web.allowed_hosts.")

    CSRFProtect(app)
    app.jinja_env.filters["path"] = display_path
    app.jinja_env.filters["local"] = format_local
    app.jinja_env.filters["basename"] = lambda text: text.rsplit("/", 1)[-1]
    app.jinja_env.filters["age"] = format_age
    app.jinja_env.globals.update(version=__version__, static_v=app.extensions["inspector"]["static_version"])
    for blueprint in (auth.blueprint, queue.blueprint, pages.blueprint, media.blueprint, api.blueprint,
                      metrics.blueprint):
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
        return error_page(exc.status, str(exc), exc.challenge)

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        g.user = auth.user_for_audit()  # the CSRF check runs before the login check: the audit line names the user
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


AUDITED = (400, 401, 403, 413, 429)  # refusals the audit log records (a 404 or 409 is an ordinary answer)


def error_page(status: int, message: str, challenge: str | None = None):
    """The refusal as a page (text for an image, JSON under /api/: api.json_error), with `challenge`, when given, its
    WWW-Authenticate header (the API's and /metrics' bearer tokens), and a line of the audit trail for the statuses
    in AUDITED."""
    if status in AUDITED:
        user = g.get("user")
        who = user.name if user else f"API token {g.api_token}" if g.get("api_token") else "(no user)"
        audit(logging.WARNING, "refused %d %s %s for %s from %s: %s", status, request.method,
              display_path(request.path)[:200], who, request.remote_addr, message)
    if request.path.startswith(API_ROOT):
        from inspector.web.api import json_error

        return json_error(status, message, challenge)
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    wants_text = request.accept_mimetypes.best == "text/plain" or request.path.startswith("/image/")
    if wants_text:
        return message + "\n", status, {"Content-Type": "text/plain; charset=utf-8", **headers}
    return render_template("error.html", status=status, message=message, user=g.get("user")), status, headers


def serve(cfg: Config, host: str, port: int, ready=None) -> None:
    """Run the review station on waitress until SIGTERM or Ctrl-C; `ready(url)` once it listens."""
    from inspector.store.store import open_configured

    with open_configured(cfg, create=False) as store:
        app = create_app(cfg, store)
        app.extensions["inspector"]["hosts"] = allowed_hosts(cfg, host)
        server = make_server(app, cfg, host, port)
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            if ready is not None:
                bound = server.effective_port if hasattr(server, "effective_port") else port
                ready(f"http://{host if ':' not in host else f'[{host}]'}:{bound}/", app)
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.close()


def make_server(app: Flask, cfg: Config, host: str, port: int):
    """waitress with the station's limits: web.connection_limit connections held at once (poll(), not select(),
    so past 1024 descriptors too), silent ones closed after web.channel_timeout, a body past web.max_request_bytes
    refused from its Content-Length (or as its chunks arrive) before it is spooled, and a request framed both by
    Content-Length and Transfer-Encoding refused with its connection closed (RFC 9112 section 6.1). Proxy
    headers reach the app, whose note_forwarding marks and drops them."""
    from waitress import create_server

    web = cfg.web
    open_files_for(web.connection_limit + web.threads + 64)
    try:
        server = create_server(app, host=host, port=port, threads=web.threads, ident="inspector",
                               clear_untrusted_proxy_headers=False, connection_limit=web.connection_limit,
                               channel_timeout=web.channel_timeout, cleanup_interval=min(30, web.channel_timeout),
                               max_request_body_size=web.max_request_bytes, asyncore_use_poll=True)
    except OSError as exc:
        raise InspectorError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program (an "
                             "inspector serve already running?) has it, or the address is not this host's; "
                             "choose another with --port / --host or web.port / web.host") from exc
    listeners = list(server.map.values()) if hasattr(server, "map") else [server]
    for listener in listeners:
        listener.channel_class = SingleFramingChannel
    return server


def _single_framing_channel():
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser, ParsingError

    class SingleFramingParser(HTTPRequestParser):
        """waitress's parser, refusing a request with both Content-Length and Transfer-Encoding (waitress would
        take it as chunked and keep the connection for the next request; a proxy that framed it by its length
        would have forwarded another request in its body). The refusal is waitress's 400, which closes."""

        def parse_header(self, header_plus):
            head = header_plus.split(b"\r\n\r\n", 1)[0].lower()
            fields = {line.split(b":", 1)[0].strip() for line in head.split(b"\r\n")[1:] if b":" in line}
            if b"content-length" in fields and b"transfer-encoding" in fields:
                raise ParsingError("the request has both Content-Length and Transfer-Encoding")
            return super().parse_header(header_plus)

    class Channel(HTTPChannel):
        parser_class = SingleFramingParser

    return Channel


SingleFramingChannel = _single_framing_channel()


def open_files_for(wanted: int) -> None:
    """Raise this process's open-file limit to `wanted` descriptors where the hard limit allows (one per
    connection); log what it could not."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning("only %d open files allowed (hard limit): fewer than web.connection_limit connections "
                        "can be held; raise LimitNOFILE in the service unit", target)


def allowed_hosts(cfg: Config, host: str) -> list[str]:
    """The names the station answers to in the Host header (any other gets 400, so a page of another site that a
    DNS rebinding points here reads nothing): web.allowed_hosts ("*.plant.example" for every name under it),
    else the loopback names and the listening address, and on a wildcard address this host's names and
    addresses. (werkzeug's TRUSTED_HOSTS would do, but it cannot match an IPv6 address.)"""
    import ipaddress
    import socket

    if cfg.web.allowed_hosts:
        return [h.strip("[]").lower() for h in cfg.web.allowed_hosts]
    names = {"localhost", "127.0.0.1", "::1", host.strip("[]")}
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        names.discard(host.strip("[]"))
        for name in (socket.gethostname(), socket.getfqdn()):
            names.add(name)
            try:
                names.update(info[4][0] for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return sorted(n.lower() for n in names)


def host_name(header: str) -> str | None:
    """The name or address of a Host header without its port ("[::1]:8470" -> "::1"); None when malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, rest = header[1:].partition("]")
        return name if bracket and (not rest or (rest.startswith(":") and rest[1:].isdigit())) else None
    name, _, port = header.partition(":")
    return name if name and (not port or port.isdigit()) and ":" not in port else None


def host_allowed(header: str, allowed: list[str]) -> bool:
    name = host_name(header)
    return name is not None and any(name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in allowed)


def _stop(signum, frame) -> None:
    raise SystemExit(0)  # waitress's loop closes its sockets on SystemExit
