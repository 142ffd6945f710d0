"""Detected hardware facts: memory, NUMA nodes, CPU topology, huge-page sizes, cpufreq.

Read once per run (``Host.facts``) from /proc and /sys under the host root."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from msgspec import field

from hosttune.errors import HostError
from hosttune.host.parsers import parse_cpulist, parse_kb_dirname, parse_meminfo
from hosttune.host.pci import PciGpu, read_gpus

if TYPE_CHECKING:
    from hosttune.host.core import Host


class Cpu(msgspec.Struct, frozen=True):
    id: int
    package: int
    core: int  # core_id (unique within a package only)
    node: int
    l3: int  # index of the L3 domain (CCD/CCX) in HostFacts.l3_domains, -1 if unknown
    siblings: tuple[int, ...]  # thread_siblings_list, including itself


class NumaNode(msgspec.Struct, frozen=True):
    id: int
    cpus: tuple[int, ...]
    mem_total_bytes: int


class HostFacts(msgspec.Struct, frozen=True):
    mem_total_bytes: int
    cpus: tuple[Cpu, ...]
    nodes: tuple[NumaNode, ...]
    l3_domains: tuple[tuple[int, ...], ...]
    hugepage_sizes: tuple[int, ...]  # bytes, e.g. (2097152, 1073741824)
    default_hugepage_bytes: int
    isolated_cpus: tuple[int, ...] = ()
    cpufreq_policies: tuple[str, ...] = ()  # e.g. ("policy0", ...)
    cpu_vendor: str = ""
    cpu_model: str = ""
    meminfo: dict[str, int] = field(default_factory=dict)
    gpus: tuple[PciGpu, ...] = ()  # NVIDIA GPUs in PCI bus order, with their NUMA node

    @property
    def cpu_ids(self) -> list[int]:
        return [c.id for c in self.cpus]

    def cpu(self, cpu_id: int) -> Cpu:
        for c in self.cpus:
            if c.id == cpu_id:
                return c
        raise KeyError(cpu_id)

    @property
    def physical_cores(self) -> list[tuple[int, ...]]:
        """Each physical core as the tuple of its logical CPUs (SMT siblings), sorted."""
        seen: dict[tuple[int, ...], None] = {}
        for c in self.cpus:
            seen.setdefault(tuple(sorted(c.siblings)), None)
        return sorted(seen, key=lambda t: t[0])

    @property
    def smt(self) -> bool:
        return any(len(c.siblings) > 1 for c in self.cpus)


def read_cpulist(host: Host, path: str) -> list[int]:
    """A sysfs CPU list file ('0-3,8'), [] when absent; garbage is a HostError naming it."""
    text = host.read_value(path)
    try:
        return parse_cpulist(text or "")
    except ValueError as err:
        raise HostError(f"{host.shown(path)}: not a CPU list ({err})") from err


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return default


def read_facts(host: Host) -> HostFacts:
    meminfo = parse_meminfo(host.read_text("/proc/meminfo") or "")
    bad = sorted(k for k, v in meminfo.items() if v < 0)
    if bad:
        raise HostError(f"{host.shown('/proc/meminfo')}: negative {bad[0]}")
    online = read_cpulist(host, "/sys/devices/system/cpu/online")
    if not online:
        online = sorted(
            int(d[3:]) for d in host.listdir("/sys/devices/system/cpu")
            if d.startswith("cpu") and d[3:].isdigit()
        )
    nodes, node_of = _read_nodes(host, online, meminfo)
    cpu_objs, l3_domains = _read_cpus(host, online, node_of)

    sizes: list[int] = []
    for d in host.listdir("/sys/kernel/mm/hugepages"):
        try:
            sizes.append(parse_kb_dirname(d))
        except ValueError:
            continue
    default_hp = meminfo.get("Hugepagesize", 2 * 1024 * 1024)

    policies = tuple(
        d for d in host.listdir("/sys/devices/system/cpu/cpufreq") if d.startswith("policy")
    )
    vendor, model = _cpu_identity(host)
    isolated = tuple(read_cpulist(host, "/sys/devices/system/cpu/isolated"))
    return HostFacts(
        mem_total_bytes=meminfo.get("MemTotal", 0),
        cpus=cpu_objs,
        nodes=tuple(sorted(nodes, key=lambda n: n.id)),
        l3_domains=l3_domains,
        hugepage_sizes=tuple(sorted(sizes)),
        default_hugepage_bytes=default_hp,
        isolated_cpus=isolated,
        cpufreq_policies=policies,
        cpu_vendor=vendor,
        cpu_model=model,
        meminfo=meminfo,
        gpus=read_gpus(host),
    )


def _read_nodes(host: Host, online: list[int], meminfo: dict[str, int]
                ) -> tuple[list[NumaNode], dict[int, int]]:
    """The NUMA nodes, and the node of each CPU."""
    # NUMA nodes (absent on kernels without CONFIG_NUMA: treat as one node 0)
    node_of: dict[int, int] = {}
    nodes: list[NumaNode] = []
    for d in host.listdir("/sys/devices/system/node"):
        if not (d.startswith("node") and d[4:].isdigit()):
            continue
        nid = int(d[4:])
        cpus = read_cpulist(host, f"/sys/devices/system/node/{d}/cpulist")
        mem = parse_meminfo(host.read_text(f"/sys/devices/system/node/{d}/meminfo") or "")
        # node meminfo lines read 'Node 0 MemTotal:  123 kB'
        total = next((v for k, v in mem.items() if k.endswith("MemTotal")), 0)
        nodes.append(NumaNode(nid, tuple(cpus), total))
        for c in cpus:
            node_of[c] = nid
    if not nodes:
        nodes = [NumaNode(0, tuple(online), meminfo.get("MemTotal", 0))]
        node_of = dict.fromkeys(online, 0)
    return nodes, node_of


def _read_cpus(host: Host, online: list[int], node_of: dict[int, int]
               ) -> tuple[tuple[Cpu, ...], tuple[tuple[int, ...], ...]]:
    """Each online CPU's topology, and the L3 domains (ordered by their first CPU)."""
    l3_lists: dict[tuple[int, ...], None] = {}
    raw: list[tuple[int, int, int, tuple[int, ...], tuple[int, ...] | None]] = []
    for cid in online:
        base = f"/sys/devices/system/cpu/cpu{cid}"
        pkg = _int(host.read_value(f"{base}/topology/physical_package_id"))
        core = _int(host.read_value(f"{base}/topology/core_id"), cid)
        sib_file = f"{base}/topology/thread_siblings_list"
        if not host.read_value(sib_file):
            sib_file = f"{base}/topology/core_cpus_list"
        sibs = tuple(read_cpulist(host, sib_file)) or (cid,)
        l3 = _l3_of(host, base)
        if l3:
            l3_lists.setdefault(l3, None)
        raw.append((cid, pkg, core, sibs, l3))
    l3_domains = tuple(sorted(l3_lists, key=lambda t: t[0]))
    cpus = tuple(
        Cpu(cid, pkg, core, node_of.get(cid, 0), l3_domains.index(l3) if l3 else -1, sibs)
        for cid, pkg, core, sibs, l3 in raw
    )
    return cpus, l3_domains


def _l3_of(host: Host, base: str) -> tuple[int, ...] | None:
    """The CPUs sharing this CPU's L3 cache (None: no level-3 cache index)."""
    for idx in host.listdir(f"{base}/cache"):
        if not idx.startswith("index"):
            continue
        if host.read_value(f"{base}/cache/{idx}/level") == "3":
            return tuple(read_cpulist(host, f"{base}/cache/{idx}/shared_cpu_list"))
    return None


def _cpu_identity(host: Host) -> tuple[str, str]:
    """(vendor_id, model name) of the first CPU in /proc/cpuinfo."""
    vendor = model = ""
    for line in (host.read_text("/proc/cpuinfo") or "").splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "vendor_id" and not vendor:
            vendor = v.strip()
        elif k == "model name" and not model:
            model = v.strip()
        if vendor and model:
            break
    return vendor, model


def find_pids(host: Host, comm: str) -> list[int]:
    """PIDs whose /proc/<pid>/comm equals ``comm`` (e.g. 'dockerd')."""
    return host.pids_by_comm({comm}).get(comm, [])
