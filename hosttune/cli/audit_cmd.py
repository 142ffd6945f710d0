"""`hosttune audit`, without typer.

audit is the command operators and monitoring run most, and its whole-process time is budgeted
(<= 0.3 s on a 2-vCPU VM). typer + click cost ~0.1 s to import and build, so ``main`` sends
the plain forms of ``hosttune audit`` here (`parse_args`: the options of argspec.AUDIT, which
the typer command is built from too) and everything else - ``--help``, a typo, an option it
does not know - to the typer app, which gives the usual usage errors. The typer command calls
`run_audit` too: one implementation, two ways in. The table is plain text (`render_rows`), and
rich is imported only to print an error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hosttune.cli import argspec

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

STATUS_STYLE = {
    "ok": "green", "drift": "bold red", "conflict": "bold magenta", "unsupported": "dim",
    "needs root": "yellow", "needs reboot": "cyan", "needs restart": "cyan",
    "offline": "dim", "error": "bold red",
}


def write_stdout(text: str) -> None:
    """Write to stdout. A reader that went away (`hosttune audit | head -3`) is not an error:
    stdout is pointed at /dev/null so that neither the next write nor the interpreter's final
    flush raises BrokenPipeError again (the recipe of Python's signal docs, "Note on
    SIGPIPE"); the command ends with its usual exit code."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def emit_json(data: Any) -> None:
    write_stdout(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def one_line(message: str) -> str:
    """A message on one line: control characters (a newline from a hostile value) shown
    escaped, so an error never prints as several lines or as terminal escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def print_error(message: str) -> None:
    from rich.console import Console
    from rich.text import Text

    # the message is data (paths, values): never markup or emoji codes, and one line
    Console(stderr=True, highlight=False, emoji=False).print(
        Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True)


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The arguments of ``hosttune audit ARGV`` as `run_audit` keywords, or None for anything
    that is not one of the command's plain forms (typer then parses it, and explains errors).
    The options are argspec.AUDIT, which the typer command is built from too."""
    return argspec.parse(argspec.AUDIT, argv, environ)


# ANSI SGR codes for STATUS_STYLE's words
_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "magenta": "35",
        "cyan": "36"}
_FLOORS = (20, 10, 10, 20)  # folding never makes a column narrower than this


def term_options(stream: Any = None) -> dict[str, Any]:
    """width and color for `render_rows` on ``stream`` (stdout): a terminal gets its width and
    color; a pipe or file gets unwrapped lines (grep-friendly) unless COLUMNS is set, and no
    color. NO_COLOR (no-color.org) and TERM=dumb turn color off, FORCE_COLOR on."""
    import shutil

    stream = stream or sys.stdout
    env = os.environ
    tty = hasattr(stream, "isatty") and stream.isatty()
    width = shutil.get_terminal_size((80, 24)).columns if tty or env.get("COLUMNS") else None
    color = bool(env.get("FORCE_COLOR")) or (tty and "NO_COLOR" not in env
                                            and env.get("TERM") != "dumb")
    return {"width": width, "color": color}


def render_rows(rows: Sequence[Any], title: str | None = None, *, width: int | None = None,
                color: bool = False) -> str:
    """Audit rows as an aligned text table: setting, current, desired, status (+ what it needs,
    and the note). Plain text on purpose, not rich: rendering this table with rich costs ~0.08 s
    (import + layout), a third of audit's 0.3 s budget. ``width``: fold cells so that lines fit
    (None: never fold)."""
    import textwrap

    head = ("SETTING", "CURRENT", "DESIRED", "STATUS")
    table: list[tuple[str, str, str, str]] = []
    styles: list[str] = []
    for r in rows:
        st = str(r.status)
        extra = [", ".join(r.needs)] if r.needs else []
        if r.note:
            extra.append(r.note)
        table.append((f"{r.tunable} {r.key}", r.current, r.desired,
                      " · ".join([st, *extra])))
        styles.append(STATUS_STYLE.get(st, ""))
    widths = [max([len(h)] + [len(line) for row in table for line in row[i].splitlines()
                              or [""]]) for i, h in enumerate(head)]
    if width is not None:
        # take a column from the one furthest above its floor until the line fits
        floors = [min(w, f) for w, f in zip(widths, _FLOORS, strict=True)]
        while sum(widths) + 2 * (len(widths) - 1) > width:
            i = max(range(len(widths)), key=lambda j: widths[j] - floors[j])
            if widths[i] <= floors[i]:
                break  # narrower than the floors: lines run over rather than fold to nothing
            widths[i] -= 1

    def fold(text: str, w: int) -> list[str]:
        lines = []
        for part in text.splitlines() or [""]:
            lines += textwrap.wrap(part, w, break_long_words=True, break_on_hyphens=False,
                                   drop_whitespace=True) or [""]
        return lines

    def paint(text: str, style: str) -> str:
        if not (color and style):
            return text
        codes = ";".join(_SGR[w] for w in style.split() if w in _SGR)
        return f"\x1b[{codes}m{text}\x1b[0m"

    out = [paint(title, "bold")] if title else []
    out.append(paint("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
                     "bold"))
    for row, style in zip(table, styles, strict=True):
        cells = [fold(c, w) for c, w in zip(row, widths, strict=True)]
        for n in range(max(len(c) for c in cells)):
            parts = [(c[n] if n < len(c) else "").ljust(w) for c, w in zip(cells, widths,
                                                                        strict=True)]
            if n == 0 and style:  # color the status word only
                word = row[3].split(" · ", 1)[0]
                parts[3] = paint(word, style) + parts[3][len(word):]
            out.append("  ".join(parts).rstrip())
    return "\n".join(out) + "\n"


def summary(report: Any) -> str:
    counts = report.counts()
    parts = [f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return " · ".join(parts) if parts else "nothing to check"


def run_audit(profile: str | None, root: Path | None, json_out: bool,
              only: list[str] | None) -> int:
    """Audit the host (or the tree under ``root``), print the report, return the exit code."""
    from hosttune import engine
    from hosttune.errors import HosttuneError
    from hosttune.host import Host
    from hosttune.profile.loader import load_profile

    if root is not None and not root.is_dir():
        print_error(f"--root {root}: not a directory")
        return EXIT_ERROR
    host = Host(root if root is not None else "/")
    try:
        loaded = load_profile(profile or "inference")  # cached: no PyYAML (profile/cache.py)
        report = engine.audit(host, loaded, only=set(only) if only else None)
    except HosttuneError as err:
        print_error(str(err))
        return EXIT_ERROR
    if json_out:
        emit_json(report.to_json())
    else:
        title = f"hosttune audit · profile {loaded.profile.name}"
        if host.offline:
            title += f" · root {host.root}"
        hint = "  → hosttune plan  to see the changes" if report.drift else ""
        write_stdout(render_rows(report.rows, title=title, **term_options())
                     + summary(report) + hint + "\n")
    return EXIT_FINDINGS if report.drift else EXIT_OK
