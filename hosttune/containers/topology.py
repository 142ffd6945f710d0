"""A view of the CPU topology for people and for JSON: packages, NUMA nodes, L3 domains (CCDs),
physical cores with their SMT siblings, isolated CPUs, GPUs and their NUMA node."""

from __future__ import annotations

from typing import Any

import msgspec

from hosttune.host.facts import HostFacts
from hosttune.host.parsers import format_cpulist


class L3View(msgspec.Struct, frozen=True):
    """The part of an L3 domain inside one NUMA node (placement never crosses a node).
    ``domain_cpus`` is the whole domain as the kernel reports it (cache/index3/
    shared_cpu_list): a guest's L3 can span NUMA nodes, and then the same index appears under
    each node it spans."""

    index: int
    cpus: tuple[int, ...]
    cores: tuple[tuple[int, ...], ...]
    domain_cpus: tuple[int, ...] = ()


class NodeView(msgspec.Struct, frozen=True):
    id: int
    mem_total_bytes: int
    cpus: tuple[int, ...]
    l3: tuple[L3View, ...]
    gpus: tuple[str, ...]  # PCI addresses


class PackageView(msgspec.Struct, frozen=True):
    id: int
    nodes: tuple[NodeView, ...]


class TopologyView(msgspec.Struct, frozen=True):
    cpu_model: str
    packages: tuple[PackageView, ...]
    cores: int
    cpus: int
    threads_per_core: int
    isolated_cpus: tuple[int, ...]
    gpus: tuple[dict[str, Any], ...]  # address, numa_node, local_cpus, device
    sibling_rule: str  # e.g. 'CPU N and N+16 are SMT siblings'

    @property
    def l3_domains(self) -> int:
        """Distinct L3 domains (one that spans NUMA nodes counts once)."""
        return len({d.index for p in self.packages for n in p.nodes for d in n.l3
                    if d.index >= 0})

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_model": self.cpu_model, "cores": self.cores, "cpus": self.cpus,
            "threads_per_core": self.threads_per_core,
            "isolated_cpus": format_cpulist(self.isolated_cpus),
            "sibling_rule": self.sibling_rule,
            "packages": [{
                "id": p.id,
                "nodes": [{
                    "id": n.id, "mem_total_bytes": n.mem_total_bytes,
                    "cpus": format_cpulist(n.cpus), "gpus": list(n.gpus),
                    "l3_domains": [{"index": d.index, "cpus": format_cpulist(d.cpus),
                                    "domain_cpus": format_cpulist(d.domain_cpus),
                                    "cores": [list(c) for c in d.cores]} for d in n.l3],
                } for n in p.nodes],
            } for p in self.packages],
            "gpus": list(self.gpus),
        }


def _sibling_rule(cores: list[tuple[int, ...]]) -> str:
    pairs = [c for c in cores if len(c) == 2]
    if not pairs:
        return "no SMT: one CPU per core"
    offsets = {b - a for a, b in pairs}
    if len(offsets) == 1 and len(pairs) == len(cores):
        off = offsets.pop()
        if off == 1:
            return "SMT siblings are adjacent: CPU 2N and 2N+1"
        return f"CPU N and N+{off} are SMT siblings (first threads first, then their siblings)"
    return "SMT siblings as listed per core"


def describe_topology(facts: HostFacts) -> TopologyView:
    by_id = {c.id: c for c in facts.cpus}
    cores = facts.physical_cores
    packages: list[PackageView] = []
    for pkg in sorted({c.package for c in facts.cpus}):
        nodes: list[NodeView] = []
        pkg_cpus = {c.id for c in facts.cpus if c.package == pkg}
        for n in facts.nodes:
            ncpus = sorted(set(n.cpus) & pkg_cpus)
            if not ncpus:
                continue
            l3: list[L3View] = []
            doms = sorted({by_id[c].l3 for c in ncpus})
            for d in doms:
                dcpus = tuple(c for c in ncpus if by_id[c].l3 == d)
                dcores = tuple(c for c in cores if c[0] in dcpus)
                whole = facts.l3_domains[d] if 0 <= d < len(facts.l3_domains) else dcpus
                l3.append(L3View(d, dcpus, dcores, tuple(whole)))
            gpus = tuple(g.address for g in facts.gpus if g.numa_node == n.id)
            nodes.append(NodeView(n.id, n.mem_total_bytes, tuple(ncpus), tuple(l3), gpus))
        packages.append(PackageView(pkg, tuple(nodes)))
    tpc = max((len(c) for c in cores), default=1)
    gpu_list = tuple({"address": g.address, "device": f"0x{g.device:04x}",
                  "numa_node": g.numa_node, "local_cpus": format_cpulist(g.local_cpus)}
                 for g in facts.gpus)
    return TopologyView(
        cpu_model=facts.cpu_model, packages=tuple(packages), cores=len(cores),
        cpus=len(facts.cpus), threads_per_core=tpc, isolated_cpus=facts.isolated_cpus,
        gpus=gpu_list, sibling_rule=_sibling_rule(cores))
