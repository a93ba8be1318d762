"""The review station: a small web application beside the daemon (Flask on waitress, rendered on the server).

Nothing here is imported by the daemon; `inspector serve` (cli/web.py) builds the app with app.create_app.
This package's __init__ holds only WebError and ext() and imports Flask only inside ext(), so `inspector
user ...` reads the users file without Flask.
"""

from __future__ import annotations

from inspector.base.errors import InspectorError


class WebError(InspectorError):
    """A request the station refuses, with the HTTP status to answer and what the user should do; `challenge`: the
    WWW-Authenticate header the answer carries (a 401 that takes a bearer token)."""

    def __init__(self, status: int, message: str, challenge: str | None = None):
        super().__init__(message)
        self.status = status
        self.challenge = challenge


def ext() -> dict:
    """The running app's station: its config (`cfg`), Store (`store`), UsersFile (`users`) and login throttle."""
    from flask import current_app

    return current_app.extensions["inspector"]
