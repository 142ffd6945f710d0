"""systemd helpers for the GPU daemons (nvidia-persistenced, the CUDA MPS control daemon):
find a unit, read its Exec lines, check accounts, enable by symlink (what ``systemctl enable``
does for ``WantedBy=``), and spot Exec lines systemd will not run as the author meant."""

from __future__ import annotations

import re
import shlex

from hosttune.errors import HostError
from hosttune.host import Host
from hosttune.tunables.base import HEADER, Change, Context, Row, setting

EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost",
             "ExecReload", "ExecCondition")
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")


def is_ours(text: str | None) -> bool:
    return bool(text) and HEADER.strip() in (text or "")


def unit_entries(text: str) -> list[tuple[str, str, str, int]]:
    """(section, key, value, line number) for every assignment, continuation lines joined."""
    out: list[tuple[str, str, str, int]] = []
    sect = ""
    buf = ""
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf:
            start = n
            s = line.strip()
            if not s or s.startswith(("#", ";")):
                continue
            if s.startswith("[") and s.endswith("]"):
                sect = s[1:-1]
                continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        key, sep, val = full.partition("=")
        if sep:
            out.append((sect, key.strip(), val.strip(), start))
    return out


def exec_argv(value: str) -> list[str]:
    """The argv of an Exec line, without systemd's prefixes (-, @, +, !, :)."""
    v = value.lstrip("-@+!:")
    try:
        return shlex.split(v)
    except ValueError:
        return v.split()


def exec_problems(text: str) -> list[str]:
    """Exec lines systemd runs differently from what a shell user expects: no shell, so a
    pipe, redirect or glob is passed as a literal argument (systemd.service(5), "Command
    lines"); and runtime directories under world-writable /tmp."""
    problems: list[str] = []
    for sect, key, val, line in unit_entries(text):
        if sect == "Service" and key in EXEC_KEYS and val:
            argv = exec_argv(val)
            shell = bool(argv) and argv[0].rsplit("/", 1)[-1] in ("sh", "bash", "dash") \
                and "-c" in argv
            if shell:
                continue
            bad = [a for a in argv[1:] if a in ("|", "||", "&&", ";", ">", ">>", "<")
                   or a.startswith((">", "<")) or re.search(r"[*?]", a)]
            if bad:
                problems.append(f"line {line}: {key} passes {' '.join(bad)!r} as literal "
                                "arguments (systemd runs no shell: no pipes, redirects or "
                                "globs)")
        if sect == "Service" and key == "Environment":
            for a in exec_argv(val):
                _, _, path = a.partition("=")
                if path.startswith(tuple(d + "/" for d in WORLD_WRITABLE)):
                    problems.append(f"line {line}: {a} is under a world-writable directory")
    return problems


def passwd_users(host: Host) -> set[str]:
    try:
        text = host.read_text("/etc/passwd") or ""
    except OSError:
        return set()
    return {line.split(":", 1)[0] for line in text.splitlines()
            if line and not line.startswith("#") and ":" in line}


def wanted_by(text: str) -> list[str]:
    out: list[str] = []
    for sect, key, val, _ in unit_entries(text):
        if sect == "Install" and key == "WantedBy":
            out.extend(val.split())
    return out or ["multi-user.target"]


def enable_link(ctx: Context, tunable: str, name: str, unit_path: str, target: str,
                *, enable: bool = True) -> tuple[Row, Change | None]:
    """Row + change for the WantedBy symlink ``systemctl enable`` would create."""
    link = f"/etc/systemd/system/{target}.wants/{name}"
    exists = ctx.host.file_state(link).exists
    now, want = ("enabled" if exists else "disabled"), ("enabled" if enable else "disabled")
    if enable:
        change = Change(id=f"{tunable}/{link}", tunable=tunable, kind="symlink",
                        summary=f"enable {name} (link {link})", path=link, value=unit_path)
    else:
        change = Change(id=f"{tunable}/{link}", tunable=tunable, kind="file",
                        summary=f"disable {name} (remove {link})", path=link, value=None)
    return setting(tunable, f"{name} enabled", now, want, None if ctx.runtime_only else change)


def is_active(host: Host, name: str) -> bool | None:
    """systemctl is-active; None when unknown (--root: commands do not run)."""
    if host.offline:
        return None
    try:
        res = host.run(["systemctl", "is-active", "--quiet", name], timeout_s=15)
    except HostError:  # no systemctl (containers, minimal images)
        return None
    return res.returncode == 0


def start_change(tunable: str, name: str, active: bool) -> Change:
    """(Re)start a unit now; on revert, stop it again (or restart it with the restored files
    when it was already running)."""
    if active:
        return Change(id=f"{tunable}/restart {name}", tunable=tunable, kind="command",
                      summary=f"systemctl restart {name}",
                      params={"argv": ["systemctl", "restart", name],
                              "revert_argv": ["systemctl", "restart", name], "post": True})
    return Change(id=f"{tunable}/start {name}", tunable=tunable, kind="command",
                  summary=f"systemctl start {name}",
                  params={"argv": ["systemctl", "start", name],
                          "revert_argv": ["systemctl", "stop", name]})
