"""Checks of cpusets against the CPU topology: overlap, SMT-sibling sharing, L3/NUMA spans.

Pure functions over ``HostFacts`` (also used by the doctor on hand-made compose files). Pinning
three containers to 0-7 / 8-15 / 16-23 and the system to 24-31 on a CPU where CPU N+16 is the
SMT sibling of CPU N (a 9950X) makes containers 0 and 2 share eight physical cores, as do
container 1 and the system CPUs. Nothing overlaps by CPU number, which is why it goes
unnoticed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import Any, Literal

import msgspec
import yaml

from hosttune.errors import HosttuneError
from hosttune.host.facts import HostFacts
from hosttune.host.parsers import format_cpulist, parse_cpulist

FindingKind = Literal["unknown-cpu", "overlap", "sibling-sharing", "reserved", "spans-l3",
                      "spans-numa", "unpinned"]


class CpusetFinding(msgspec.Struct, frozen=True):
    kind: FindingKind
    names: tuple[str, ...]
    cpus: tuple[int, ...]
    severity: Literal["error", "warning"]
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "names": list(self.names), "cpus": format_cpulist(self.cpus),
                "severity": self.severity, "message": self.message}


def core_of(facts: HostFacts) -> dict[int, tuple[int, ...]]:
    """Logical CPU -> its physical core (the sorted tuple of SMT siblings)."""
    return {c: core for core in facts.physical_cores for c in core}


def shared_cores(facts: HostFacts, a: Iterable[int], b: Iterable[int]
                 ) -> list[tuple[int, ...]]:
    """Physical cores that both sets use through *different* SMT threads."""
    cmap = core_of(facts)
    sa, sb = set(a), set(b)
    out: dict[tuple[int, ...], None] = {}
    for x in sa:
        core = cmap.get(x)
        if core is None:
            continue
        if any(y in sb and y != x for y in core) and any(y in sb for y in core):
            out.setdefault(core, None)
    return sorted(out)


def check_cpusets(facts: HostFacts, cpusets: Mapping[str, Iterable[int]], *,
                  reserved: Iterable[int] = (), reserved_name: str = "reserved"
                  ) -> list[CpusetFinding]:
    """Findings about named cpusets (container -> logical CPUs) on this topology.

    Errors: a CPU the host does not have, two sets sharing a CPU, two sets sharing a physical
    core through its SMT siblings, a set using a reserved CPU. Warnings: a set spanning L3
    domains (cache traffic between CCDs) or NUMA nodes (remote memory)."""
    sets = {name: tuple(sorted(set(cpus))) for name, cpus in cpusets.items()}
    known = set(facts.cpu_ids)
    out: list[CpusetFinding] = []
    for name, cpus in sets.items():
        unknown = [c for c in cpus if c not in known]
        if unknown:
            out.append(CpusetFinding(
                "unknown-cpu", (name,), tuple(unknown), "error",
                f"{name}: CPUs {format_cpulist(unknown)} do not exist on this host "
                f"(online: {format_cpulist(sorted(known))})"))
    for (na, a), (nb, b) in combinations(sets.items(), 2):
        both = sorted(set(a) & set(b))
        if both:
            out.append(CpusetFinding(
                "overlap", (na, nb), tuple(both), "error",
                f"{na} ({format_cpulist(a)}) and {nb} ({format_cpulist(b)}) share CPUs "
                f"{format_cpulist(both)}"))
        sib = shared_cores(facts, a, b)
        if sib:
            pairs = ", ".join("/".join(map(str, c)) for c in sib)
            out.append(CpusetFinding(
                "sibling-sharing", (na, nb), tuple(c for core in sib for c in core), "error",
                f"{na} ({format_cpulist(a)}) and {nb} ({format_cpulist(b)}) share "
                f"{len(sib)} physical core(s) through SMT siblings ({pairs}): they compete for "
                "the same execution units and L1/L2 caches"))
    res = set(reserved)
    if res:
        for name, cpus in sets.items():
            hit = sorted(set(cpus) & res)
            if hit:
                out.append(CpusetFinding(
                    "reserved", (name, reserved_name), tuple(hit), "error",
                    f"{name} uses CPUs {format_cpulist(hit)} reserved for {reserved_name}"))
        for name, cpus in sets.items():
            sib = [c for c in shared_cores(facts, cpus, res)
                   if not set(c) & set(cpus) & res]
            if sib:
                pairs = ", ".join("/".join(map(str, c)) for c in sib)
                out.append(CpusetFinding(
                    "sibling-sharing", (name, reserved_name),
                    tuple(c for core in sib for c in core), "error",
                    f"{name} shares physical core(s) {pairs} with the CPUs reserved for "
                    f"{reserved_name} through SMT siblings"))
    by_id = {c.id: c for c in facts.cpus}
    for name, cpus in sets.items():
        l3s = sorted({by_id[c].l3 for c in cpus if c in by_id and by_id[c].l3 >= 0})
        if len(l3s) > 1:
            out.append(CpusetFinding(
                "spans-l3", (name,), cpus, "warning",
                f"{name} ({format_cpulist(cpus)}) spans {len(l3s)} L3 domains (CCDs) "
                f"{', '.join(format_cpulist(facts.l3_domains[i]) for i in l3s)}: its threads "
                "share data across the fabric"))
        nodes = sorted({by_id[c].node for c in cpus if c in by_id})
        if len(nodes) > 1:
            out.append(CpusetFinding(
                "spans-numa", (name,), cpus, "warning",
                f"{name} ({format_cpulist(cpus)}) spans NUMA nodes {nodes}: half its memory "
                "traffic is remote"))
    return out


def _services(text: str, source: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise HosttuneError(f"{source}: not YAML: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise HosttuneError(f"{source}: no 'services' mapping")
    return doc["services"]


def cpusets_from_compose(text: str, *, source: str = "compose file") -> dict[str, list[int]]:
    """services.<name>.cpuset of a compose file -> {service (or container_name): CPUs}.

    Services without a cpuset are left out (they may run anywhere - the caller decides)."""
    out: dict[str, list[int]] = {}
    for name, svc in _services(text, source).items():
        if not isinstance(svc, dict) or svc.get("cpuset") in (None, ""):
            continue
        label = str(svc.get("container_name") or name)
        try:
            out[label] = parse_cpulist(str(svc["cpuset"]))
        except ValueError as err:
            raise HosttuneError(f"{source}: services.{name}.cpuset: {err}") from err
    return out


def check_compose(facts: HostFacts, text: str, *, source: str = "compose file"
                  ) -> list[CpusetFinding]:
    """check_cpusets() over a compose file's services, plus a warning for each service without
    a cpuset when others are pinned: it runs on every CPU, the pinned services' cores too."""
    sets = cpusets_from_compose(text, source=source)
    out = check_cpusets(facts, sets)
    if sets:
        for name, svc in _services(text, source).items():
            label = str(svc.get("container_name") or name) if isinstance(svc, dict) else name
            if label not in sets:
                out.append(CpusetFinding(
                    "unpinned", (label,), tuple(facts.cpu_ids), "warning",
                    f"{label} has no cpuset: it may run on every CPU, including the cores "
                    f"pinned for {', '.join(sorted(sets))}"))
    return out
