"""Evidence of what happened at boot, from systemd itself: failed units and their journal
lines, mounts of the previous boot. Live only: under --root the commands are recorded as
skipped (a tree has no running systemd to ask), and each reader returns nothing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class FailedUnit:
    unit: str
    description: str
    journal: tuple[str, ...]  # the unit's last journal lines of this boot (its reason)
    restarts: int = 0  # NRestarts of this boot
    listed: str = "failed"  # the list-units state it was found in

    @property
    def looping(self) -> bool:
        """Failing again and again (Restart=), never listed as failed."""
        return self.listed != "failed"


def _units(ctx: DoctorContext, state: str) -> list[tuple[str, str]]:
    out = _run(ctx, ["systemctl", "list-units", f"--state={state}", "--all", "--plain",
                     "--no-legend", "--no-pager"])
    units = []
    for line in (out or "").splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4 and state in (parts[2], parts[3]):
            units.append((parts[0].lstrip("●* "), parts[4] if len(parts) > 4 else ""))
    return units


def _show(ctx: DoctorContext, unit: str) -> dict[str, str]:
    out = _run(ctx, ["systemctl", "show", "-p", "SubState", "-p", "NRestarts", "-p", "Result",
                     unit]) or ""
    return dict(ln.partition("=")[::2] for ln in out.splitlines() if "=" in ln)


def _looping(props: dict[str, str], restarts: int, state: str) -> bool:
    """A unit Restart= keeps starting. Between two tries it waits in "auto-restart" (systemd
    >= 254 also "auto-restart-queued"); during a try it is "start"/"start-pre" with
    NRestarts >= 1; right after a failed try it is deactivating ("stop-post", its
    ExecStopPost= running, as the seed's persistenced unit's `rm -rf`) with the failure
    as Result. Asking for one of these misses the loop whenever the query lands in another
    - often on a slow host (seen under TCG while CI ran beside the guest)."""
    if state == "deactivating":  # stopping after a restart is a loop only if a try failed
        return restarts > 0 and props.get("Result", "success") != "success"
    return props.get("SubState", "").startswith("auto-restart") or restarts > 0


def failed_units(ctx: DoctorContext) -> list[FailedUnit]:
    """`systemctl --failed`, and units a Restart= setting keeps starting again after each
    failure (activating or deactivating, never listed as failed, as with the seed's
    nvidia-persistenced unit, Restart=on-failure every 5 s), with their journal lines."""
    found: list[FailedUnit] = []
    for state in ("failed", "activating", "deactivating"):
        for unit, desc in _units(ctx, state):
            props = _show(ctx, unit)
            n = props.get("NRestarts", "0")
            restarts = int(n) if n.isdigit() else 0
            if state != "failed" and not _looping(props, restarts, state):
                continue  # starting for the first time, or stopping: nothing has failed yet
            log = _run(ctx, ["journalctl", "--no-pager", "-q", "-b", "-o", "cat", "-n", "8",
                             "-u", unit]) or ""
            found.append(FailedUnit(unit, desc, tuple(s for s in log.splitlines() if s.strip()),
                                    restarts, state))
    return found


def journal_pid1(ctx: DoctorContext) -> str | None:
    """systemd's own messages of this boot (journalctl -b _PID=1), None when unreadable."""
    return _run(ctx, ["journalctl", "--no-pager", "-q", "-b", "-o", "cat", "_PID=1"])


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
    out = _run(ctx, ["journalctl", "--no-pager", "-q", "-b", "-1", "-o", "json", "_PID=1",
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
