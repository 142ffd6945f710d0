"""A small parser of systemd unit files (systemd.syntax(7)): sections, repeated keys,
line continuation with a trailing backslash, comments with # or ; at line start."""

from __future__ import annotations

import msgspec


class UnitEntry(msgspec.Struct, frozen=True):
    section: str
    key: str
    value: str
    lineno: int  # line where the entry starts


def parse_unit(text: str) -> list[UnitEntry]:
    out: list[UnitEntry] = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        s = raw.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            continue
        # continuation: a trailing backslash joins the next line (comments inside skipped)
        while s.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            if nxt.startswith(("#", ";")):
                continue
            s = s[:-1] + " " + nxt
        key, sep, value = s.partition("=")
        if not sep:
            continue
        out.append(UnitEntry(section, key.strip(), value.strip(), start))
    return out


EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost",
             "ExecReload", "ExecCondition")
SHELLS = ("sh", "bash", "dash", "zsh", "ksh", "busybox")


def split_exec(value: str) -> list[str]:
    """Split an Exec line as systemd does (quotes, backslash escapes), after the special
    prefixes (@ - : + ! !!) are removed."""
    import shlex

    v = value.lstrip()
    while v and v[0] in "@-:+!|":
        v = v[1:]
    try:
        return shlex.split(v, posix=True)
    except ValueError:
        return v.split()
