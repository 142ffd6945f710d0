"""Shell commands that hand-made scripts and units run, for checks that look at what they set
(nvidia-smi settings, IRQ masks). Read-only: scripts are parsed, never executed."""

from __future__ import annotations

import re
import shlex
import stat

import msgspec

from hosttune.doctor.base import DoctorContext
from hosttune.doctor.checks_systemd import _shell_script, unit_files
from hosttune.host.unitfile import EXEC_KEYS, parse_unit, split_exec

SCRIPT_DIRS = ("/usr/local/bin", "/usr/local/sbin", "/etc/rc.local.d")
SCRIPT_FILES = ("/etc/rc.local",)
OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", ";;", "|&"}
SHELLS = ("sh", "bash", "dash", "zsh", "ksh")


class ShellLine(msgspec.Struct, frozen=True):
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
            st = host.lstat(p)
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= MAX_SCRIPT_BYTES:
                out.append(p)
    out += [f for f in SCRIPT_FILES if host.is_file(f)]
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


HISTORY_FILES = ("/root/.bash_history",)


def history_lines(ctx: DoctorContext) -> list[ShellLine]:
    """Commands typed at a shell (root's and users' ~/.bash_history): the notes' one-off
    commands (`sudo sed -i ...`) live there, not in a script."""
    host = ctx.host
    files = list(HISTORY_FILES) + [f"/home/{u}/.bash_history" for u in host.listdir("/home")]
    out: list[ShellLine] = []
    for p in files:
        try:
            text = host.read_text(p)
        except PermissionError:
            continue
        if text:
            out.extend(script_lines(p, text))
    return out


def bre_to_re(pattern: str) -> re.Pattern[str] | None:
    """A POSIX basic regular expression (grep, sed) as Python sees it: GNU's \\| \\( \\) are
    operators, bare | ( ) + ? { } are literal characters."""
    rx = re.sub(r"\\([|()+?{}])|([|()+?{}])", lambda m: m.group(1) or "\\" + m.group(2),
                pattern)
    try:
        return re.compile(rx)
    except re.error:
        return None


class SedDelete(msgspec.Struct, frozen=True):
    """A `sed -i '/RE/d' FILE` edit: every line of FILE matching RE is deleted."""

    where: str
    command: str  # as written
    regex: re.Pattern[str]
    files: tuple[str, ...]
    backup_suffix: str  # -i.bak keeps FILE.bak; "" when sed keeps no copy


_SED_DELETE = re.compile(r"\s*(?:/((?:[^/\\]|\\.)*)/|\\(.)(.*?)\2)\s*d\s*;?\s*")


def sed_deletions(lines: list[ShellLine]) -> list[SedDelete]:
    out: list[SedDelete] = []
    for sl in lines:
        for argv in commands(sl.text):
            if argv[0].rsplit("/", 1)[-1] != "sed":
                continue
            scripts: list[str] = []
            files: list[str] = []
            suffix = ""
            inplace = False
            args = iter(argv[1:])
            for a in args:
                if a in ("-e", "--expression"):
                    scripts.append(next(args, ""))
                elif a.startswith("--in-place"):
                    inplace, suffix = True, a.partition("=")[2]
                elif a.startswith("-") and not a.startswith("--") and len(a) > 1:
                    if "i" in a[1:]:
                        inplace = True
                        suffix = a[a.index("i") + 1:]
                    if "e" in a[1:] and a.endswith("e"):
                        scripts.append(next(args, ""))
                elif not scripts:
                    scripts.append(a)
                else:
                    files.append(a)
            if not inplace:
                continue
            for script in scripts:
                m = _SED_DELETE.fullmatch(script)
                if m is None:
                    continue
                rx = bre_to_re(m.group(1) if m.group(1) is not None else m.group(3))
                if rx is not None:
                    out.append(SedDelete(sl.where, sl.text.strip(), rx, tuple(files), suffix))
    return out
