"""Who is asking: a login (signed session cookie) or the plant's reverse proxy's user header, and their role.

Every page but /login, /healthz and the static files needs a user; a POST that records a review needs the
reviewer role. A session names its user and that user's stamp (role and password hash), so a new password, a
new role or a removed user ends the sessions made before. Failed logins are throttled per name and address.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import threading
import time
from collections import deque

from flask import Blueprint, g, redirect, render_template, request, session, url_for

from inspector.web import WebError, ext
from inspector.web.users import USER_NAME, User

log = logging.getLogger("inspector.web")
blueprint = Blueprint("auth", __name__)
OPEN_ENDPOINTS = {"auth.login", "pages.healthz", "static"}
# Failed logins counted in FAILURE_WINDOW_SECONDS: per name (guessing one password), and per address (guessing many
# names; higher, since a whole shift may come through one proxy address).
NAME_FAILURES, ADDRESS_FAILURES, FAILURE_WINDOW_SECONDS = 5, 20, 300


MAX_KEYS = 10_000  # names and addresses remembered at most (the oldest forgotten first): memory stays bounded


class LoginThrottle:
    """Failed logins per key ("name:..." and "addr:...") in the last FAILURE_WINDOW_SECONDS; one per app."""

    def __init__(self):
        self._lock = threading.Lock()
        self._failures: dict[str, deque] = {}

    def _recent(self, key: str, now: float) -> deque:
        times = self._failures.get(key, deque())
        while times and times[0] < now - FAILURE_WINDOW_SECONDS:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times

    def wait_seconds(self, keys: list[str]) -> float:
        """0 when a login may be tried now, else how long until the oldest counted failure expires."""
        now = time.monotonic()
        with self._lock:
            waits = [times[0] + FAILURE_WINDOW_SECONDS - now for key in keys
                     if len(times := self._recent(key, now)) >= (NAME_FAILURES if key.startswith("name:")
                                                                  else ADDRESS_FAILURES)]
        return max(waits, default=0.0)

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                times.append(now)
                self._failures.pop(key, None)
                self._failures[key] = times  # newest last: the first keys are the ones to forget
            while len(self._failures) > MAX_KEYS:
                self._failures.pop(next(iter(self._failures)))

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def from_trusted_proxy() -> bool:
    """The request came from an address in web.trusted_proxies (its user header may be believed: see proxied)."""
    proxies = ext()["cfg"].web.trusted_proxies
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:10.0.0.7 from a server on ::
    return any(address in ipaddress.ip_network(p, strict=False) for p in proxies)


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


@blueprint.before_app_request
def require_login():
    g.via_proxy = False
    g.user = None
    if request.endpoint in OPEN_ENDPOINTS:
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
        wait = throttle.wait_seconds(keys)
        if wait > 0:
            problem, status = f"Too many failed logins: wait {wait:.0f} s and try again.", 429
        else:
            user = users.verify(name, request.form.get("password", "")) if USER_NAME.fullmatch(name) else None
            if user is None:
                throttle.failed(keys)
                log.warning("failed login as %r from %s", name, request.remote_addr)
                problem, status = "Wrong name or password.", 401
            else:
                throttle.succeeded(keys)
                session.clear()
                session.permanent = True
                session["user"], session["stamp"], session["login_at"] = user.name, user.stamp, int(time.time())
                log.info("login: %s (%s) from %s", user.name, user.role, request.remote_addr)
                return redirect(safe_next(request.form.get("next")))
    no_users = not users.load()
    return render_template("login.html", problem=problem, name=name, next=request.values.get("next", ""),
                           no_users=no_users, users_file=ext()["cfg"].users_path, user=None), status


@blueprint.route("/logout", methods=["POST"])
def logout():
    log.info("logout: %s", g.user.name)
    session.clear()
    return redirect(url_for("auth.login"))
