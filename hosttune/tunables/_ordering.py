"""Ordering of the boot-time units hosttune writes against units it does not own.

hosttune-boot.service (and the MPS unit) are wanted by multi-user.target and run before the
container runtimes, so they must never wait for a unit that itself waits for the end of the
boot. A target is ordered after the units it wants (systemd.target(5), "Default
Dependencies") unless a unit is ordered after the target itself (systemd leaves that edge out,
src/core/unit.c unit_add_default_target_dependency): such a unit starts last, and any unit the
target wants that is ordered after it closes a cycle. systemd breaks a cycle at boot by
deleting start jobs, whichever it meets first (systemd.unit(5) only promises "one of the
jobs"): on a Debian 12 guest whose hand-written nvidia-persistenced.service had
``After=multi-user.target``, the deleted jobs were hosttune-boot.service's in one boot and
docker.service's plus containerd.service's in another (journal: "Job docker.service/start
deleted to break ordering cycle starting with multi-user.target/start").

So before ordering itself after such a unit, hosttune follows the unit's After= chain (unit
file and drop-ins) and leaves the unit out when the chain reaches the end of the boot or one
of hosttune's own units; the row says why, and `hosttune doctor` reports the cycle itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hosttune.host.unitfile import parse_unit
from hosttune.tunables._systemd import UNIT_DIRS, find_unit

if TYPE_CHECKING:
    from hosttune.host import Host

# targets reached only at the end of the boot (default.target is an alias of one of them)
LATE_TARGETS = frozenset({"multi-user.target", "graphical.target", "default.target"})
MAX_DEPTH = 16  # After= chains are short; a bound keeps a hostile tree from costing much


def after_of(host: Host, unit: str) -> list[str]:
    """The units ``unit`` is ordered after: After= of its unit file and of its drop-ins
    (``<unit>.d/*.conf`` in every unit directory; an empty ``After=`` resets the list, as
    systemd.unit(5) says for list settings)."""
    texts: list[str] = []
    path = find_unit(host, unit)
    if path is not None:
        texts.append(host.read_text(path) or "")
    drop_ins: dict[str, str] = {}  # file name -> path: an earlier directory wins
    for d in UNIT_DIRS:
        dd = f"{d}/{unit}.d"
        if host.is_dir(dd):
            for name in host.listdir(dd):
                if name.endswith(".conf"):
                    drop_ins.setdefault(name, f"{dd}/{name}")
    texts += [host.read_text(drop_ins[n]) or "" for n in sorted(drop_ins)]
    after: list[str] = []
    for text in texts:
        for e in parse_unit(text):
            if e.section == "Unit" and e.key == "After":
                if not e.value:
                    after = []
                after += e.value.split()
    return after


def waits_for_boot(host: Host, unit: str, ours: frozenset[str]) -> list[str] | None:
    """The After= chain from ``unit`` to the end of the boot or to one of ``ours`` (e.g.
    ["nvidia-persistenced.service", "multi-user.target"]), None when there is none."""
    seen: set[str] = set()
    stack: list[list[str]] = [[unit]]
    while stack:
        chain = stack.pop()
        last = chain[-1]
        if last in LATE_TARGETS or (len(chain) > 1 and last in ours):
            return chain
        if last in seen or len(chain) > MAX_DEPTH:
            continue
        seen.add(last)
        stack += [[*chain, nxt] for nxt in after_of(host, last)]
    return None


def safe_after(host: Host, units: tuple[str, ...], ours: frozenset[str]
               ) -> tuple[list[str], list[str]]:
    """``units`` without those that wait for the end of the boot (or for ``ours``), and one
    note per unit left out. Units in ``ours`` are kept: hosttune writes them, and its units
    never wait for the boot."""
    kept: list[str] = []
    notes: list[str] = []
    for u in units:
        skip = u.endswith(".target") or u in ours
        chain = None if skip else waits_for_boot(host, u, ours)
        if chain is None:
            kept.append(u)
        else:
            notes.append(f"not ordered after {u}: it is ordered after "
                         f"{' -> '.join(chain[1:])}, which would make an ordering cycle that "
                         "systemd breaks by not starting some unit at boot (fix that unit; "
                         "hosttune doctor: systemd.ordering-cycle)")
    return kept, notes
