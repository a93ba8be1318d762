"""Who is asking: a login (signed session cookie) or the plant's reverse proxy's user header, and their role.

Every page but /login, /healthz, /metrics (web/metrics.py checks its own token) and the static files needs a user;
a POST that records a review needs the reviewer role. The JSON API under /api/ is not a page: its API tokens
(api.py) are its only credential. A session names its user and that user's stamp (role, password hash and the
users file's generation of the user), so a logout, a new password, a new role (even changed back) or a removed user
ends the sessions made before, on the server. Login tries are throttled per name and address (LoginThrottle).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from typing import Callable
import logging
import threading
import time
from collections import deque

from flask import Blueprint, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from inspector.base.logsetup import AUDIT_LOGGER
from inspector.web import WebError, ext
from inspector.web.users import User, UserError

log = logging.getLogger("inspector.web")
audit_log = logging.getLogger(AUDIT_LOGGER)
blueprint = Blueprint("auth", __name__)
OPEN_ENDPOINTS = {"auth.login", "pages.healthz", "static", "metrics.scrape"}  # /metrics checks its own token
API_ROOT = "/api/"  # the JSON API (api.py): its API tokens only, never a login; its own check, its JSON errors
# Failed logins counted in FAILURE_WINDOW_SECONDS: per name (guessing one password), and per address (guessing many
# names; higher, since a whole shift may come through one proxy address).
NAME_FAILURES, ADDRESS_FAILURES, FAILURE_WINDOW_SECONDS = 5, 20, 300


def audit(level: int, message: str, *args: object) -> None:
    """One line of the audit trail (`audit: ...`): a login, a failed or refused login, a logout, a decision, a
    withdrawal or a refused request, each naming the user and the client's address."""
    audit_log.log(level, "audit: " + message, *args)


MAX_KEYS = 10_000  # names and addresses with their own counter at most; memory stays bounded
SWEEP_SECONDS = 1.0  # a full table is swept of expired counters at most this often


class LoginThrottle:
    """Login tries per key ("name:..." and "addr:...") in the last FAILURE_WINDOW_SECONDS; one per app.

    A try is counted when it starts (`attempt`), before its password is checked, so parallel tries on one name
    get no more checks than the limit; a successful one is then taken off the address's count (never the whole
    count) and clears its name's. A counter is never forgotten while it counts: with MAX_KEYS counters alive,
    new keys share one overflow counter per kind, so a flood of junk names makes tries wait, never a victim's
    failures vanish.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._tries: dict[str, deque] = {}
        self._swept = 0.0

    @staticmethod
    def _limit(key: str) -> int:
        return NAME_FAILURES if key.startswith("name:") else ADDRESS_FAILURES

    def _slot(self, key: str, now: float) -> str:
        if key in self._tries or len(self._tries) < MAX_KEYS:
            return key
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            for old in [k for k, times in self._tries.items() if times[-1] < now - FAILURE_WINDOW_SECONDS]:
                del self._tries[old]
            if len(self._tries) < MAX_KEYS:
                return key
        return key.split(":", 1)[0] + ":*overflow*"  # a name can hold neither ':' nor '*'

    def _recent(self, key: str, now: float) -> deque:
        times = self._tries.get(key, deque())
        while times and times[0] < now - FAILURE_WINDOW_SECONDS:
            times.popleft()
        return times

    def _wait(self, keys: list[str], now: float) -> float:
        waits = []
        for key in keys:
            times = self._recent(self._slot(key, now), now)
            if len(times) >= self._limit(key):
                waits.append(times[-self._limit(key)] + FAILURE_WINDOW_SECONDS - now)
        return max(waits, default=0.0)

    def _count(self, keys: list[str], now: float) -> None:
        for key in keys:
            slot = self._slot(key, now)
            times = self._recent(slot, now)
            times.append(now)
            self._tries[slot] = times

    def wait_seconds(self, keys: list[str]) -> float:
        """0 when a login may be tried now, else how long until enough counted tries expire."""
        with self._lock:
            return self._wait(keys, time.monotonic())

    def failed(self, keys: list[str]) -> None:
        """Count a failed try (one that was not counted by `attempt`)."""
        with self._lock:
            self._count(keys, time.monotonic())

    def attempt(self, keys: list[str]) -> tuple[float, float]:
        """(0, when) and the try counted, when it may go on to the password check; (seconds to wait, 0) if not."""
        now = time.monotonic()
        with self._lock:
            wait = self._wait(keys, now)
            if wait > 0:
                return wait, 0.0
            self._count(keys, now)
            return 0.0, now

    def succeeded(self, keys: list[str], when: float) -> None:
        """The try counted at `when` found the right password: its name starts afresh; its address keeps every
        other try it made (an attacker's own account does not buy more guesses)."""
        with self._lock:
            for key in keys:
                if key.startswith("name:"):
                    self._tries.pop(key, None)
                elif (times := self._tries.get(key)) is not None and when in times:
                    times.remove(when)


class PagesOnlySessions(SecureCookieSessionInterface):
    """The login cookie is the pages' only: under API_ROOT it is neither read nor refreshed (an API answer never
    sets a cookie; a token is the API's only credential)."""

    def open_session(self, app, request):
        if request.path.startswith(API_ROOT):
            return self.null_session_class()
        return super().open_session(app, request)


# A proxy's forwarding headers (WSGI environ keys). Nothing here believes them; a request carrying one came through
# a proxy, i.e. from someone else than the peer's address says (/metrics answers this host's own clients only).
FORWARDING_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO",
                      "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_BY", "HTTP_X_REAL_IP")
VIA_PROXY = "inspector.via_proxy"  # environ: the request carried a forwarding header


def note_forwarding(wsgi_app: Callable) -> Callable:
    """Mark a request that carried a proxy's forwarding headers (environ[VIA_PROXY]), then drop them, so no part
    of the app can believe them. This replaces waitress's own clearing of untrusted proxy headers, which happens
    before the app and would leave it unable to tell a proxied request from this host's own."""
    def app(environ: dict, start_response: Callable):
        environ[VIA_PROXY] = bool([environ.pop(key) for key in FORWARDING_HEADERS if key in environ])
        return wsgi_app(environ, start_response)
    return app


def client_address() -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The request's client address, an IPv4-mapped one as IPv4 (::ffff:10.0.0.7 from a server on ::); None when
    the server gave none that parses."""
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def from_trusted_proxy() -> bool:
    """The request came from an address in web.trusted_proxies (its user header may be believed: see proxied)."""
    proxies = ext()["cfg"].web.trusted_proxies
    address = client_address()
    return address is not None and any(address in ipaddress.ip_network(p, strict=False) for p in proxies)


def proxy_secret_sent() -> bool:
    """The request carries web.proxy_secret in web.proxy_secret_header: the proxy sent it, not another program on
    the proxy's host nor a web page (a page cannot know the secret)."""
    web = ext()["cfg"].web
    sent = request.headers.get(web.proxy_secret_header, "")
    return bool(web.proxy_secret) and hmac.compare_digest(sent.encode(), web.proxy_secret.encode())


def request_user() -> User | None:
    """The user of this request, or None; raises WebError 403 for a proxy user the users file does not know."""
    users = ext()["users"]
    header = ext()["cfg"].web.remote_user_header
    if header:
        name = request.headers.get(header, "").strip()
        trusted = from_trusted_proxy()
        if name and trusted and proxy_secret_sent():
            user = users.get(name)
            if user is None:
                raise WebError(403, f"{name} (named by the proxy's {header} header) is not a user of this station: "
                                    f"an administrator runs `inspector user add {name} --role viewer` (or reviewer)")
            g.via_proxy = True
            return user
        if name:
            why = (f"no valid {ext()['cfg'].web.proxy_secret_header}" if trusted else "not in web.trusted_proxies")
            log.warning("ignored the %s header from %s: %s", header, request.remote_addr, why)
    name, stamp, since = session.get("user"), session.get("stamp"), session.get("login_at", 0)
    if not name:
        return None
    user = users.get(name)
    expired = time.time() - float(since) > ext()["cfg"].web.session_hours * 3600
    if user is None or user.password_hash is None or user.stamp != stamp or expired:
        session.clear()  # removed, its password or role changed since this login, or the login is too old
        return None
    return user


def user_for_audit() -> User | None:
    """This request's user, for the audit line of a refusal made before the login check (a bad CSRF token)."""
    try:
        return request_user()
    except (WebError, UserError):  # a proxy user the users file does not know, an unreadable file: (no user)
        return None


@blueprint.before_app_request
def require_login():
    g.via_proxy = False
    g.user = None
    if request.endpoint in OPEN_ENDPOINTS or request.path.startswith(API_ROOT):
        return None
    g.user = request_user()
    if g.user is not None:
        return None
    if request.method in ("GET", "HEAD"):
        return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))
    raise WebError(401, "You are not logged in (or your login has ended): log in and try again.")


def reviewer_only(view):
    """For views that record reviews: a viewer is refused (403)."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not g.user.can_review:
            raise WebError(403, f"{g.user.name} is a viewer: only a reviewer records decisions "
                                f"(`inspector user role {g.user.name} reviewer`).")
        return view(*args, **kwargs)

    return wrapped


def safe_next(target: str | None) -> str:
    """A place on this site to go to after the login, never another site: a path (no scheme, no host), without
    a backslash, a space or a control character (browsers drop tabs and newlines, so "/\t/evil" is "//evil")."""
    from urllib.parse import urlsplit

    if (not target or not target.startswith("/") or any(c == "\\" or not c.isprintable() or c.isspace()
                                                        for c in target)):
        return url_for("queue.home")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return url_for("queue.home")
    return target


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    users = ext()["users"]
    problem = None
    status = 200
    name = request.form.get("name", "").strip() if request.method == "POST" else ""
    if request.method == "POST":
        # per address only for direct clients: behind the proxy every login comes from its address
        keys = [f"name:{name[:64]}"] + ([] if from_trusted_proxy() else [f"addr:{request.remote_addr}"])
        throttle = ext()["throttle"]
        wait, when = throttle.attempt(keys)  # counted before the check: parallel tries cannot outrun the limit
        if wait > 0:
            audit(logging.WARNING, "refused login as %r from %s: too many failed logins (wait %.0f s)", name[:64],
                  request.remote_addr, wait)
            problem, status = f"Too many failed logins: wait {wait:.0f} s and try again.", 429
        else:
            user = users.verify(name, request.form.get("password", ""))  # every name costs a hash: no timing tell
            if user is None:
                audit(logging.WARNING, "failed login as %r from %s", name[:64], request.remote_addr)
                problem, status = "Wrong name or password.", 401
            else:
                throttle.succeeded(keys, when)
                session.clear()
                session.permanent = True
                session["user"], session["stamp"], session["login_at"] = user.name, user.stamp, int(time.time())
                audit(logging.INFO, "login: %s (%s) from %s", user.name, user.role, request.remote_addr)
                return redirect(safe_next(request.form.get("next")))
    no_users = not users.load()
    return render_template("login.html", problem=problem, name=name, next=request.values.get("next", ""),
                           no_users=no_users, user=None), status


@blueprint.route("/logout", methods=["POST"])
def logout():
    """Ends every session of this user on the server (the users file's generation), not only this cookie."""
    session.clear()
    try:
        ext()["users"].end_sessions(g.user.name)
    except UserError as exc:
        log.error("logout of %s from %s could not end the sessions on the server: %s", g.user.name,
                  request.remote_addr, exc)
        raise WebError(503, "You are logged out in this browser, but the server could not record the logout: "
                            "the server log says why; an administrator fixes it.") from None
    audit(logging.INFO, "logout: %s from %s", g.user.name, request.remote_addr)
    return redirect(url_for("auth.login"))
