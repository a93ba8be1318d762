"""The review station: a small web application beside the daemon (Flask on waitress, rendered on the server).

Nothing here is imported by the daemon; `inspector serve` (cli/web.py) builds the app with app.create_app.
This package's __init__ holds only WebError and imports nothing, so `inspector user ...` reads the users file
without Flask.
"""

from inspector.errors import InspectorError

MAX_ID = 2**63 - 1  # a database id; a larger number in a URL or a form is no record of this station's


class WebError(InspectorError):
    """A request the station refuses, with the HTTP status to answer and what the user should do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
