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


def failed_units(ctx: DoctorContext) -> list[FailedUnit]:
    """`systemctl --failed`, with each unit's journal lines of this boot."""
    out = _run(ctx, ["systemctl", "list-units", "--failed", "--all", "--plain", "--no-legend",
                     "--no-pager"])
    if out is None:
        return []
    units: list[FailedUnit] = []
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4 or parts[2] != "failed":
            continue
        unit = parts[0].lstrip("●* ")
        log = _run(ctx, ["journalctl", "--no-pager", "-q", "-b", "-o", "cat", "-n", "8",
                         "-u", unit]) or ""
        units.append(FailedUnit(unit, parts[4] if len(parts) > 4 else "",
                                tuple(s for s in log.splitlines() if s.strip())))
    return units


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
