"""The one-line `Error: ...` a failed command prints (cli.InspectorGroup), for tests run through click's runner."""

from __future__ import annotations


def error_of(result) -> str:
    """The message of a command that failed with a domain error (exit 1), without the `Error: ` prefix."""
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    return result.output.removeprefix("Error: ").rstrip("\n")
