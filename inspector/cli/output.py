"""The one output convention of the commands that print records (docs/CLI.md#output-and-exit-codes):

- `--format text|json` (and `csv` where a command writes CSV), `text` the default, for people;
- `--format json` prints ONE JSON document on standard output: a list of objects, one per record, for a command that
  lists records (verdicts, rejections, reviews, score, user list), one object for a command that reports one thing
  (status, model info, dataset check, cv, evaluate, rescore, retrain, config show); UTF-8, times in UTC ISO 8601;
  notes and progress go to standard error, so `inspector verdicts --format json | jq '.[]'` always parses;
- `-o/--output FILE` (where a command wrote a file before) writes the output, in any format, to FILE instead.

The old spellings (`--json`, `--json OUT`, `--format table`, `--format toml`) stay one release as hidden aliases that
behave as before and print a one-line deprecation note on standard error."""

from __future__ import annotations

import csv
import functools
import io
import json
from datetime import datetime
from pathlib import PurePath
from typing import Callable, Literal

import click

TEXT, CSV, JSON = "text", "csv", "json"
# old --format values -> the value that replaces them (one release, with a note)
OLD_VALUES = {"table": TEXT, "toml": TEXT}
LegacyJson = Literal["flag", "file"] | None


def deprecated(old: str, new: str) -> None:
    """The one-line note an old spelling prints on standard error."""
    click.echo(f"{old} is deprecated; use {new}", err=True)


class FormatChoice(click.Choice):
    """click.Choice that also takes an old value (`table`, `toml`) for one release, with a note."""

    def convert(self, value, param, ctx):
        new = OLD_VALUES.get(value) if isinstance(value, str) else None
        if new is not None and new in self.choices and value not in self.choices:
            deprecated(f"--format {value}", f"--format {new}")
            return new
        return super().convert(value, param, ctx)


def _default(value: object) -> object:
    """What json.dumps cannot write by itself: paths, times, numpy scalars, tuples in sets."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(doc: object) -> str:
    """The JSON every command prints: one document, indented, UTF-8 (no \\u escapes for names)."""
    return json.dumps(doc, indent=2, ensure_ascii=False, default=_default)


def echo_json(doc: object) -> None:
    click.echo(to_json(doc))


def emit(text: str, output: str | None) -> None:
    """Print `text`, or with --output write it to FILE (atomically: a reader never sees half a file)."""
    if output is None:
        click.echo(text)
        return
    from inspector.base.durable import write_atomic
    from inspector.base.errors import InspectorError

    try:
        write_atomic(output, text if text.endswith("\n") else text + "\n", durable=False)
    except OSError as exc:
        raise InspectorError(f"cannot write {output}: {exc.strerror or exc}; check the folder and free space") from None
    click.echo(f"wrote {output}", err=True)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns as wide as their widest cell; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for cells in [headers, *rows]:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])] + [cells[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def render_csv(rows: list[dict], fields: list[str]) -> str:
    """`rows` as CSV with a header line of `fields`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def emit_rows(records: list[dict], fields: list[str], fmt: str, headers: list[str], cells: list[list[str]],
              shown_of: tuple[int, int] | None, empty: str) -> None:
    """Print records as json/csv, or as a table (`empty` when there are none) with a "N of M shown" footer when
    `shown_of` (shown, total) says the rows were cut."""
    if fmt == JSON:
        echo_json(records)
    elif fmt == CSV:
        click.echo(render_csv(records, fields), nl=False)
    elif not records:
        click.echo(empty)
    else:
        click.echo(render_table(headers, cells))
        if shown_of and shown_of[1] > shown_of[0]:
            click.echo(f"{shown_of[0]} of {shown_of[1]} shown; --limit to see more")


OUTPUT = click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                      help="Write the output (in the --format chosen) to FILE instead of standard output.")


def format_option(*extra: str, legacy_json: LegacyJson = None, text_help: str = "for people") -> Callable:
    """Add `--format text|json` (`extra` formats, e.g. "csv", between them) to a command, passed as `fmt`.

    legacy_json="flag": also a hidden `--json` flag, an alias of `--format json`. legacy_json="file": a hidden
    `--json OUT` (it wrote the JSON to OUT beside the text), passed on as `json_out` for the command to do as before.
    """
    choices = (TEXT, *extra, JSON)
    scripts = " or ".join((*extra, JSON))
    help_text = f"text {text_help}; {scripts} for scripts (json: one document, UTC times; see docs/CLI.md)."

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args, fmt: str, **kwargs):
            if legacy_json == "flag":
                if kwargs.pop("legacy_json"):
                    deprecated("--json", "--format json")
                    fmt = JSON
            elif legacy_json == "file":
                json_out = kwargs.pop("legacy_json")
                if json_out:
                    deprecated("--json OUT", "--format json --output OUT")
                kwargs["json_out"] = json_out
            return func(*args, fmt=fmt, **kwargs)

        wrapper = click.option("--format", "fmt", type=FormatChoice(choices), default=TEXT, show_default=True,
                               help=help_text)(wrapper)
        if legacy_json == "flag":
            wrapper = click.option("--json", "legacy_json", is_flag=True, hidden=True)(wrapper)
        elif legacy_json == "file":
            wrapper = click.option("--json", "legacy_json", type=click.Path(dir_okay=False), default=None,
                                   hidden=True)(wrapper)
        return wrapper

    return decorate
