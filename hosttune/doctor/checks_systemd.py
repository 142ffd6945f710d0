"""systemd units that cannot work as written."""

from __future__ import annotations

import re
from collections.abc import Iterator

from hosttune.doctor import boot
from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.host.unitfile import EXEC_KEYS, SHELLS, parse_unit, split_exec
from hosttune.tunables._ordering import LATE_TARGETS, waits_for_boot
from hosttune.tunables.base import HEADER

UNIT_DIRS = ("/etc/systemd/system",)
SHELL_TOKENS = {"|": "a pipe", "||": "'||'", "&&": "'&&'", ">": "a redirect", ">>": "a redirect",
                "<": "a redirect", "2>": "a redirect", "2>&1": "a redirect", "&": "'&'"}
GLOB = re.compile(r"[*?]|\[[^\]]*\]")


def unit_files(ctx: DoctorContext) -> list[str]:
    host = ctx.host
    out: list[str] = []
    for d in UNIT_DIRS:
        for name in host.listdir(d):
            p = f"{d}/{name}"
            if name.endswith((".service", ".mount", ".swap", ".timer", ".socket")):
                if host.is_file(p) and not host.is_symlink(p):
                    out.append(p)
            elif name.endswith(".d") and host.is_dir(p):
                out.extend(f"{p}/{f}" for f in host.listdir(p) if f.endswith(".conf"))
    return out


def _users(ctx: DoctorContext) -> set[str]:
    text = ctx.host.read_text("/etc/passwd") or ""
    return {line.split(":", 1)[0] for line in text.splitlines() if ":" in line}


def _groups(ctx: DoctorContext) -> set[str]:
    text = ctx.host.read_text("/etc/group") or ""
    return {line.split(":", 1)[0] for line in text.splitlines() if ":" in line}


def _shell_script(argv: list[str]) -> str | None:
    """The script of `sh -c '...'`-style lines, else None."""
    if not argv:
        return None
    prog = argv[0].rsplit("/", 1)[-1]
    if prog not in SHELLS:
        return None
    args = argv[1:]
    if prog == "busybox" and args and args[0] in ("sh", "ash"):
        args = args[1:]
    for i, a in enumerate(args):
        if a == "-c" or (a.startswith("-") and "c" in a[1:] and not a.startswith("--")):
            return args[i + 1] if i + 1 < len(args) else ""
    return None


def check_units(ctx: DoctorContext) -> Iterator[Finding]:
    users = _users(ctx)
    groups = _groups(ctx)
    for path in unit_files(ctx):
        text = ctx.host.read_text(path) or ""
        entries = parse_unit(text)
        dynamic = any(e.key == "DynamicUser" and e.value.lower() in ("yes", "true", "1")
                      for e in entries)
        for e in entries:
            where = f"{path}:{e.lineno}"
            if e.key in EXEC_KEYS and e.value:
                yield from _check_exec(where, e.key, e.value, users)
            elif e.key == "User" and not dynamic and e.value and e.value not in users \
                    and not e.value.isdigit():
                yield Finding("systemd.missing-user", Severity.ERROR,
                              f"User={e.value} does not exist", where,
                              "systemd refuses to start the service (status 217/USER).",
                              f"create the account (useradd --system {e.value}) or change User=")
            elif e.key == "Group" and not dynamic and e.value and e.value not in groups \
                    and not e.value.isdigit():
                yield Finding("systemd.missing-group", Severity.ERROR,
                              f"Group={e.value} does not exist", where,
                              "systemd refuses to start the service (status 216/GROUP).",
                              f"create the group (groupadd --system {e.value}) or change Group=")


def _check_exec(where: str, key: str, value: str, users: set[str]) -> Iterator[Finding]:
    argv = split_exec(value)
    script = _shell_script(argv)
    if script is None:
        bad = [t for t in argv[1:] if t in SHELL_TOKENS or t.startswith((">", "2>"))]
        if bad:
            what = SHELL_TOKENS.get(bad[0], "a redirect")
            yield Finding(
                "systemd.exec-shell-syntax", Severity.ERROR,
                f"{key} uses {what} ({bad[0]!r}) without a shell", where,
                "systemd does not run Exec lines through a shell: "
                f"{bad[0]!r} and the words after it are passed to {argv[0]} as arguments, so "
                "the command does something else (often nothing) and may still report success.",
                "let hosttune manage it (e.g. gpu.mps for the MPS control daemon: stop writes "
                "'quit' to its stdin), or wrap the line in /bin/sh -c '...' deliberately")
        globs = [t for t in argv[1:] if GLOB.search(t) and not t.startswith("-")]
        if globs:
            yield Finding(
                "systemd.exec-glob", Severity.ERROR,
                f"{key} passes a glob ({globs[0]!r}) without a shell", where,
                "systemd does not expand globs: the program receives the literal pattern.",
                "let hosttune manage the setting, or use an explicit list of paths")
        if argv and argv[0].rsplit("/", 1)[-1] == "nvidia-persistenced":
            for i, a in enumerate(argv):
                if a in ("--user", "-u") and i + 1 < len(argv) and argv[i + 1] not in users:
                    yield Finding(
                        "systemd.missing-user", Severity.ERROR,
                        f"nvidia-persistenced --user {argv[i + 1]}: no such user", where,
                        "nvidia-persistenced exits at start when it cannot drop privileges to "
                        "that account, so persistence is never enabled.",
                        f"useradd --system --no-create-home {argv[i + 1]}; or profile key "
                        "gpu.persistence (hosttune creates a working unit)")
        return
    # A shell is used: look for redirects to globs, which bash refuses with "ambiguous
    # redirect" when the pattern matches several files (and dash writes a literal '*' file).
    for m in re.finditer(r"(?<![0-9&])>{1,2}\s*([^\s;&|]+)", script):
        target = m.group(1)
        if GLOB.search(target):
            yield Finding(
                "systemd.exec-glob-redirect", Severity.ERROR,
                f"{key} redirects to a glob ({target})", where,
                "a redirect writes to ONE file: bash fails with 'ambiguous redirect' when the "
                "glob matches several (dash creates a file literally named with '*'), so the "
                "setting is applied to no CPU at all.",
                "profile key cpu.governor (hosttune writes every policy and re-applies at boot)")


def check_units_verify(ctx: DoctorContext) -> Iterator[Finding]:
    """Run `systemd-analyze verify` on each unit file (skipped, and listed, under --root)."""
    import shutil

    host = ctx.host
    units = [p for p in unit_files(ctx) if not p.endswith(".conf")]
    if not units or (not host.offline and shutil.which("systemd-analyze") is None):
        return
    for p in units:
        res = host.run(["systemd-analyze", "verify", str(host.path(p))], timeout_s=60)
        if res.skipped or res.returncode == 0:
            continue
        detail = " ".join(line.strip() for line in res.stderr.splitlines()[:3])
        yield Finding(
            "systemd.verify-failed", Severity.ERROR,
            f"{p.rsplit('/', 1)[-1]} fails systemd-analyze verify", p,
            f"systemd will not load it as written: {detail}",
            "fix the unit, or let hosttune manage the setting it was written for")


# systemd's progress lines, which say nothing about why; some carry the unit as a prefix
# ("X.service: Scheduled restart job, restart counter is at 7.")
_GENERIC = re.compile(r"^(?:\S+\.service: )?(Starting |Started |Stopped |Failed to start "
                      r"|Scheduled restart job|Stopping |Consumed |Deactivated successfully)")
_STATUS = re.compile(r"status=(2\d\d)/([A-Z_]+)")
# The exit statuses systemd itself sets when it could not start the program, from
# systemd.exec(5), "Process Exit Codes". The child's own "Failed at step EXEC spawning ..."
# line is not always in `journalctl -u`: journald attributes a message to a unit by the
# sender's cgroup, read from /proc after the fact, and a child that exits at once can be gone
# by then (seen in a Debian 12 guest, systemd 252). PID 1's "status=203/EXEC" always is.
_STEPS = {
    "CHDIR": "the WorkingDirectory= is missing or not accessible",
    "EXEC": "the program could not be executed (execve failed): most likely it does not "
            "exist or is not executable",
    "GROUP": "the Group= (or the User='s group) does not exist",
    "USER": "the User= does not exist or could not be switched to",
    "NAMESPACE": "the namespace set-up failed (a path in ReadWritePaths=, BindPaths= etc. is "
                 "missing)",
    "STDOUT": "the StandardOutput= target could not be opened",
}


def _reason(lines: tuple[str, ...]) -> list[str]:
    """The journal lines that say why, each once (a restart loop repeats them every try),
    newest last, and what systemd's own exit status means."""
    specific = [s for s in lines if not _GENERIC.match(s)] or list(lines)
    seen: dict[str, None] = {}
    for s in reversed(specific):
        seen.setdefault(s, None)
    reason = list(reversed(list(seen)))[-4:]
    steps = {m.group(2) for s in lines for m in _STATUS.finditer(s) if m.group(2) in _STEPS}
    return reason + [f"status {step}: {_STEPS[step]}" for step in sorted(steps)]


def check_failed_units(ctx: DoctorContext) -> Iterator[Finding]:
    """Units that failed at this boot (`systemctl --failed`), with the journal's reason."""
    for fu in boot.failed_units(ctx):
        reason = _reason(fu.journal)
        local = f"/etc/systemd/system/{fu.unit}"
        has_file = ctx.host.exists(local)
        looping = fu.looping
        times = f"{fu.restarts} time{'s' if fu.restarts != 1 else ''}"
        yield Finding(
            "systemd.unit-restart-loop" if looping else "systemd.unit-failed", Severity.ERROR,
            f"{fu.unit} fails and is restarted again and again (restarted {times} this boot)"
            if looping else f"{fu.unit} failed at this boot",
            f"live: systemctl list-units --state={fu.listed} ({fu.unit})" if looping
            else f"live: systemctl --failed ({fu.unit})",
            (f"{fu.description}: " if fu.description else "")
            + ("the journal says: " + " | ".join(reason) if reason
               else "no journal lines for it are readable (journalctl -b -u " + fu.unit + ")")
            + ".",
            (f"see the findings for {local}; " if has_file else "")
            + "fix or disable the unit (systemctl disable " + fu.unit + "); hosttune manages "
            "the settings such units are written for (cpu.governor, gpu.persistence, "
            "gpu.locked_clocks, gpu.mps) with units that check their preconditions")


def _install_targets(text: str) -> set[str]:
    return {t for e in parse_unit(text) if e.section == "Install"
            and e.key in ("WantedBy", "RequiredBy") for t in e.value.split()}


def _default_deps(text: str) -> bool:
    return not any(e.section == "Unit" and e.key == "DefaultDependencies"
                   and e.value.lower() in ("no", "false", "0", "off") for e in parse_unit(text))


def _deleted_in(breaks: list[boot.CycleBreak], cause: str, dragged: list[str]) -> list[str]:
    """The deleted jobs of this boot that belong to the cycle `cause` closes: systemd named
    `cause` in that cycle, or the job was of `cause` or of a unit dragged in. A cycle is
    only attributed when its messages say so: two hand-made units can each open one."""
    ours = {cause, *(q.rsplit("/", 1)[1] for q in dragged)}
    return sorted({b.unit for b in breaks if cause in b.cycle or b.unit in ours})


def check_ordering_cycles(ctx: DoctorContext) -> Iterator[Finding]:
    """A unit that a late target (multi-user.target, ...) wants and that is ordered after that
    target. A target is ordered after the units it wants (systemd.target(5) "Default
    Dependencies"; not for units with DefaultDependencies=no) - except a unit already ordered
    after it: systemd leaves that edge out, a loop of two (src/core/unit.c
    unit_add_default_target_dependency, "Don't create loops"). So such a unit alone only
    starts after the rest of the boot (a warning). A cycle needs a third unit: one the target
    wants that is ordered after it (a gpu-clocks.service after nvidia-persistenced.service),
    and systemd breaks that at boot by deleting start jobs - whichever it meets first, often
    of units that did nothing wrong (tunables/_ordering.py)."""
    breaks = boot.cycle_breaks(ctx)
    for cause, dragged in sorted(_late_ordered(ctx).items()):
        if dragged:
            yield _cycle(cause, dragged, _deleted_in(breaks, cause, dragged))
        else:
            yield _after_the_boot(cause)


def _late_ordered(ctx: DoctorContext) -> dict[str, list[str]]:
    """The units whose own After= names a late target that wants a unit ordered after them
    (or them) -> the unit files of the wanted units ordered after them."""
    host = ctx.host
    dragged_by: dict[str, list[str]] = {}
    for p in unit_files(ctx):
        if p.endswith(".conf"):
            continue
        text = host.read_text(p) or ""
        if text.startswith(HEADER) or not _default_deps(text):
            continue
        unit = p.rsplit("/", 1)[1]
        wanted_by = _install_targets(text) & LATE_TARGETS
        chain = waits_for_boot(host, unit, frozenset()) if wanted_by else None
        if chain is None or chain[-1] not in LATE_TARGETS:
            continue
        cause = chain[-2]  # the unit whose own After= names the target
        dragged = dragged_by.setdefault(cause, [])
        if cause != unit:
            dragged.append(p)
    return dragged_by


def _cycle(cause: str, dragged: list[str], deleted: list[str]) -> Finding:
    evidence = (f" At this boot systemd deleted the start job of {', '.join(deleted)} to "
                "break it (journal: \"deleted to break ordering cycle\")." if deleted
                else " Which job systemd deletes to break it differs from boot to boot.")
    names = ", ".join(q.rsplit("/", 1)[1] for q in dragged)
    return Finding(
        "systemd.ordering-cycle", Severity.ERROR,
        f"{cause} is ordered after the end of the boot that waits for it",
        f"/etc/systemd/system/{cause}",
        f"{cause} has After= on a target, and {names} - wanted by that target, which is "
        f"ordered after the units it wants - have After= on {cause}: an ordering cycle."
        + evidence + " Any unit the target wants and that is ordered after these is in the "
        "cycle too: the unit skipped may be docker.service or hosttune-boot.service.",
        f"remove After=multi-user.target (and the like) from {cause}; for "
        "nvidia-persistenced, profile key gpu.persistence (hosttune writes a unit without "
        "it)", tuple(dragged))


def _after_the_boot(cause: str) -> Finding:
    return Finding(
        "systemd.after-own-target", Severity.WARNING,
        f"{cause} starts only after the rest of the boot", f"/etc/systemd/system/{cause}",
        f"{cause} has After= on a target that wants it. systemd leaves out the target's own "
        "ordering after it (that would be a loop of two), so there is no cycle: it starts "
        "once everything else of the boot has started (services that rely on what it sets "
        "run without it until then). A unit the target wants that is ordered after it would "
        "close a cycle; hosttune's units never are.",
        f"remove After=multi-user.target (and the like) from {cause}, or order it Before= "
        "the services that need it; for a CPU governor unit, profile key cpu.governor")
