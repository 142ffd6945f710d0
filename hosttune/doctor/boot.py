"""Evidence of what happened at boot, from systemd itself: failed units and their journal
lines, mounts of the previous boot. Live only: under --root the commands are recorded as
skipped (a tree has no running systemd to ask), and each reader returns nothing."""

from __future__ import annotations

import json
import re

import msgspec

from hosttune.doctor.base import DoctorContext
from hosttune.errors import HostError


def _run(ctx: DoctorContext, argv: list[str]) -> str | None:
    """stdout of a read-only systemd query, None when it could not answer."""
    try:
        res = ctx.host.run(argv, timeout_s=30)
    except HostError:
        return None
    if res.skipped or res.returncode != 0:
        return None
    return res.stdout


class FailedUnit(msgspec.Struct, frozen=True):
    unit: str
    description: str
    journal: tuple[str, ...]  # the unit's last journal lines of this boot (its reason)
    restarts: int = 0  # NRestarts of this boot
    listed: str = "failed"  # its ActiveState when asked

    @property
    def looping(self) -> bool:
        """Failing again and again (Restart=), never listed as failed."""
        return self.listed != "failed"


# One query for all three states: a unit in a restart loop moves between activating and
# deactivating every few seconds, and one query per state can miss it in both (asked for
# activating while it was deactivating, for deactivating once it was activating again).
STATES = ("failed", "activating", "deactivating")


def _units(ctx: DoctorContext) -> list[tuple[str, str, str]]:
    """(unit, ActiveState, description) of the units systemctl lists in STATES."""
    out = _run(ctx, ["systemctl", "list-units", f"--state={','.join(STATES)}", "--all", "--plain",
                     "--no-legend", "--no-pager"])
    units = []
    for line in (out or "").splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4 and parts[2] in STATES:
            units.append((parts[0].lstrip("●* "), parts[2], parts[4] if len(parts) > 4 else ""))
    return units


def _show(ctx: DoctorContext, unit: str) -> dict[str, str]:
    out = _run(ctx, ["systemctl", "show", "-p", "ActiveState", "-p", "SubState", "-p",
                     "NRestarts", "-p", "Result", unit]) or ""
    return dict(ln.partition("=")[::2] for ln in out.splitlines() if "=" in ln)


def _looping(props: dict[str, str], restarts: int, state: str) -> bool:
    """A unit Restart= keeps starting. Between two tries it waits in "auto-restart" (systemd
    >= 254 also "auto-restart-queued"); during a try it is "start"/"start-pre" with
    NRestarts >= 1; right after a failed try it is deactivating ("stop-post", its
    ExecStopPost= running, e.g. a cleanup `rm -rf`) with the failure
    as Result. Asking for one of these misses the loop whenever the query lands in another
    - often on a slow host (seen under TCG while CI ran beside the guest)."""
    if state == "deactivating":  # stopping after a restart is a loop only if a try failed
        return restarts > 0 and props.get("Result", "success") != "success"
    return props.get("SubState", "").startswith("auto-restart") or restarts > 0


def failed_units(ctx: DoctorContext) -> list[FailedUnit]:
    """`systemctl --failed`, and units a Restart= setting keeps starting again after each
    failure (activating or deactivating, never listed as failed: e.g. a daemon that exits at
    start under Restart=on-failure, RestartSec=5), with their journal lines.
    A unit is judged by its state when shown, a moment after it was listed."""
    found: list[FailedUnit] = []
    for unit, listed, desc in _units(ctx):
        props = _show(ctx, unit)
        state = props.get("ActiveState") or listed
        n = props.get("NRestarts", "0")
        restarts = int(n) if n.isdigit() else 0
        if state != "failed" and not (state in STATES and _looping(props, restarts, state)):
            continue  # starting for the first time, stopping, or started after all
        log = _run(ctx, ["journalctl", "--no-pager", "-q", "-b", "-o", "cat", "-n", "40",
                         "-u", unit]) or ""
        found.append(FailedUnit(unit, desc, tuple(s for s in log.splitlines() if s.strip()),
                                restarts, state))
    return sorted(found, key=lambda f: (f.looping, f.unit))


# systemd's own messages: those it logged to journald (_PID=1) or, early in the boot before
# journald ran, to the kernel log, which journald imports with _TRANSPORT=kernel and the
# "systemd[1]:" prefix parsed into SYSLOG_PID (systemd-journald.service(8), "/dev/kmsg").
# The boot transaction's ordering-cycle messages are of the second kind: `_PID=1` alone
# never shows them (seen on a Debian 12 guest, systemd 252). Only root writes /dev/kmsg.
PID1 = ["_PID=1", "+", "_TRANSPORT=kernel", "SYSLOG_PID=1"]


def journal_pid1(ctx: DoctorContext) -> str | None:
    """systemd's own messages of this boot (PID1), None when unreadable."""
    return _run(ctx, ["journalctl", "--no-pager", "-q", "-b", "-o", "cat", *PID1])


_DELETED = re.compile(r"Job (\S+)/start deleted to break ordering cycle")
_UNIT = re.compile(r"([^\s/:→]+\.(?:service|target|mount|automount|swap|socket|path|timer"
                   r"|slice|scope|device))\b")


class CycleBreak(msgspec.Struct, frozen=True):
    """A start job systemd deleted at this boot to break an ordering cycle."""
    unit: str  # whose start job went
    cycle: frozenset[str]  # the units systemd's messages named for that cycle


def cycle_breaks(ctx: DoctorContext) -> list[CycleBreak]:
    """The jobs deleted to break ordering cycles at this boot, each with the units of its cycle:
    systemd logs "Found ordering cycle on A/start", "Found dependency on B/start", ... (252,
    src/core/transaction.c; later versions one "Found ordering cycle: A → B → ..." line), then
    "Job A/start deleted to break ordering cycle starting with T/start"."""
    found: list[CycleBreak] = []
    named: set[str] = set()
    for line in (journal_pid1(ctx) or "").splitlines():
        m = _DELETED.search(line)
        if "Found ordering cycle" in line:  # a new cycle (one without a deletion was fatal)
            named = set()
        if "ordering cycle" in line or "Found dependency on" in line:  # m's line too
            named.update(_UNIT.findall(line.partition(": ")[2] or line))
        if m:
            found.append(CycleBreak(m.group(1), frozenset(named)))
            named = set()
    return found


_MOUNTED = re.compile(r"^Mounted (?:(\S+\.mount)(?: - .*)?|(/.*))\.$")


def unit_to_path(unit: str) -> str:
    """systemd-escape --unescape --path for a .mount unit name."""
    body = unit.removesuffix(".mount")
    if body == "-":
        return "/"
    chars = body.replace("-", "/")
    return "/" + re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), chars)


def previous_boot_mounts(ctx: DoctorContext) -> dict[str, str]:
    """mount point -> the journal line of the previous boot that says systemd mounted it
    (persistent journal only; empty when there is none)."""
    out = _run(ctx, ["journalctl", "--no-pager", "-q", "-b", "-1", "-o", "json", *PID1,
                     "--output-fields=UNIT,MESSAGE"])
    found: dict[str, str] = {}
    for line in (out or "").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = rec.get("MESSAGE")
        if not isinstance(msg, str):
            continue
        m = _MOUNTED.match(msg)
        if not m:
            continue
        unit = rec.get("UNIT") if isinstance(rec.get("UNIT"), str) else m.group(1)
        path = unit_to_path(unit) if unit else m.group(2)
        if path:
            found[path] = msg
    return found
