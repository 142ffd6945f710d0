"""Shell commands that hand-made scripts and units run, for checks that look at what they set
(nvidia-smi settings, IRQ masks). Read-only: scripts are parsed, never executed."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from hosttune.doctor.base import DoctorContext
from hosttune.doctor.checks_systemd import _shell_script, unit_files
from hosttune.doctor.unitfile import EXEC_KEYS, parse_unit, split_exec

SCRIPT_DIRS = ("/usr/local/bin", "/usr/local/sbin", "/etc/rc.local.d")
SCRIPT_FILES = ("/etc/rc.local",)
OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", ";;", "|&"}
SHELLS = ("sh", "bash", "dash", "zsh", "ksh")


@dataclass(frozen=True)
class ShellLine:
    where: str  # file:line
    file: str
    text: str  # shell text (a script's logical line, or a unit's Exec command)


def _is_shell_script(text: str, name: str) -> bool:
    first = text.split("\n", 1)[0]
    if first.startswith("#!"):
        words = first[2:].split()
        prog = words[0].rsplit("/", 1)[-1] if words else ""
        if prog == "env" and len(words) > 1:
            prog = words[1]
        return prog in SHELLS
    return name.endswith(".sh")


MAX_SCRIPT_BYTES = 256 * 1024  # /usr/local/bin also holds binaries: scripts are small


def script_files(ctx: DoctorContext) -> list[str]:
    host = ctx.host
    out: list[str] = []
    for d in SCRIPT_DIRS:
        for n in host.listdir(d):
            p = f"{d}/{n}"
            real = host.path(p)
            if real.is_file() and not real.is_symlink() and \
                    real.stat().st_size <= MAX_SCRIPT_BYTES:
                out.append(p)
    out += [f for f in SCRIPT_FILES if host.path(f).is_file()]
    return out


def script_lines(path: str, text: str) -> list[ShellLine]:
    """Logical lines of a shell script (trailing-backslash continuations joined)."""
    out: list[ShellLine] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i + 1
        s = lines[i]
        i += 1
        while s.endswith("\\") and i < len(lines):
            s = s[:-1] + " " + lines[i]
            i += 1
        if s.strip() and not s.lstrip().startswith("#"):
            out.append(ShellLine(f"{path}:{start}", path, s))
    return out


def shell_lines(ctx: DoctorContext) -> list[ShellLine]:
    """Every shell line of local scripts, and every Exec command of local units (the script
    of `sh -c '...'`, or the command itself)."""
    host = ctx.host
    out: list[ShellLine] = []
    for p in script_files(ctx):
        try:
            text = host.read_text(p) or ""
        except PermissionError:
            continue
        if _is_shell_script(text, p):
            out.extend(script_lines(p, text))
    for p in unit_files(ctx):
        try:
            text = host.read_text(p) or ""
        except PermissionError:
            continue
        for e in parse_unit(text):
            if e.key not in EXEC_KEYS or not e.value:
                continue
            argv = split_exec(e.value)
            script = _shell_script(argv)
            out.append(ShellLine(f"{p}:{e.lineno}", p,
                                 script if script is not None else shlex.join(argv)))
    return out


def commands(text: str) -> list[list[str]]:
    """Simple commands of a shell line: split at | || && ; & ( ), redirects cut off, a leading
    sudo/env/exec dropped."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        toks = list(lex)
    except ValueError:
        toks = text.split()
    out: list[list[str]] = []
    cur: list[str] = []
    cut = False
    for t in toks:
        if t in OPERATORS:
            if cur:
                out.append(cur)
            cur, cut = [], False
            continue
        if cut:
            continue
        if re.fullmatch(r"[<>&]+|\d?[<>]+&?", t):
            cut = True  # the rest of this command is redirect targets
            continue
        cur.append(t.removeprefix("$("))
    if cur:
        out.append(cur)
    cleaned: list[list[str]] = []
    for argv in out:
        while argv and argv[0].rsplit("/", 1)[-1] in ("sudo", "env", "exec", "command"):
            argv = argv[1:]
            while argv and (argv[0].startswith("-") or "=" in argv[0]):
                argv = argv[1:]
        if argv:
            cleaned.append(argv)
    return cleaned
