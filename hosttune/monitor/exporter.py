"""Prometheus exporter: a custom collector over the monitor's collectors, base units.

The audit runs on a background interval (AuditCache.start), never on the scrape path; a scrape
reads only cheap /proc and /sys values."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as PromCollector
from prometheus_client.registry import CollectorRegistry

from hosttune.errors import HosttuneError
from hosttune.monitor.gpu import COMPUTE_MODES
from hosttune.monitor.snapshot import (
    AuditSummary,
    ContainersReading,
    CpuReading,
    GpusReading,
    HugePagesReading,
    MemLockedReading,
    MemoryReading,
    Monitor,
    Snapshot,
    StoreReading,
    Unavailable,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

DEFAULT_LISTEN = "127.0.0.1:9866"
P = "hosttune_"

# name -> (type, help); the dashboard test checks every name it uses is listed here and emitted.
METRICS: dict[str, tuple[str, str]] = {
    "collector_up": ("gauge", "1 if the collector could read its subsystem, else 0"),
    "setting_compliant": ("gauge", "1 if the setting matches the profile at the last audit"),
    "drift_settings": ("gauge", "Number of settings drifting from the profile"),
    "audit_last_timestamp_seconds": ("gauge", "Unix time the last audit finished"),
    "audit_duration_seconds": ("gauge", "How long the last audit took"),
    "audit_up": ("gauge", "1 if the last audit ran, else 0"),
    "cpu_frequency_hertz": ("gauge", "Current CPU frequency (cpufreq, else /proc/cpuinfo)"),
    "cpu_governor_info": ("gauge", "The active cpufreq governor of a CPU (always 1)"),
    "memory_total_bytes": ("gauge", "MemTotal"),
    "memory_available_bytes": ("gauge", "MemAvailable"),
    "swap_total_bytes": ("gauge", "SwapTotal"),
    "swap_free_bytes": ("gauge", "SwapFree"),
    # Pages are the unit (the kernel counts pools in pages of page_size_bytes). System-wide
    # and per-node pools are separate metrics: one metric holding both (node="all" next to
    # node="0") makes every sum() count each page twice. No _total suffix: these are gauges.
    "hugepages_pool_pages": ("gauge", "Huge pages in the system-wide pool (nr_hugepages)"),
    "hugepages_free_pages": ("gauge", "Free huge pages, system-wide"),
    "hugepages_surplus_pages": ("gauge", "Surplus (overcommitted) huge pages, system-wide"),
    "hugepages_reserved_pages": ("gauge", "Reserved, not yet faulted huge pages, system-wide"),
    "hugepages_node_pool_pages": ("gauge", "Huge pages in a NUMA node's pool"),
    "hugepages_node_free_pages": ("gauge", "Free huge pages of a NUMA node"),
    "hugepages_node_surplus_pages": ("gauge", "Surplus huge pages of a NUMA node"),
    "hugetlb_vmemmap_saved_bytes": ("gauge", "Struct-page memory HugeTLB Vmemmap "
                                    "Optimization frees on the huge-page pools"),
    "memlocked_bytes": ("gauge", "Mlocked memory (meminfo Mlocked)"),
    "model_store_used_bytes": ("gauge", "Huge-page memory held by files in a hugetlbfs mount"),
    "model_store_size_bytes": ("gauge", "size= limit of a hugetlbfs mount"),
    "model_store_files": ("gauge", "Files in a hugetlbfs mount"),
    "container_vmlck_bytes": ("gauge", "Sum of VmLck over a container's processes"),
    "container_memory_bytes": ("gauge", "Container cgroup memory usage"),
    "container_cpu_seconds": ("counter", "Container cgroup CPU time"),
    "container_cpuset_compliant": ("gauge", "1 if pinned to whole cores without overlap"),
    "gpu_power_watts": ("gauge", "GPU power draw"),
    "gpu_power_limit_watts": ("gauge", "Enforced GPU power limit"),
    "gpu_clock_hertz": ("gauge", "GPU clock (clock=sm|mem)"),
    "gpu_compute_mode": ("gauge", "1 for the GPU's current compute mode"),
    "gpu_persistence_mode": ("gauge", "1 if persistence mode is on"),
}


def _fam(name: str, labels: list[str]) -> GaugeMetricFamily | CounterMetricFamily:
    kind, doc = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(P + name, doc, labels=labels)
    return GaugeMetricFamily(P + name, doc, labels=labels)


def _compliance(aud: AuditSummary) -> dict[tuple[str, str], bool]:
    """One value per (tunable, key): an audit may report several findings for one key (two
    errors on one file:line), and a repeated series is an invalid exposition. The key is
    compliant only if every finding on it is."""
    out: dict[tuple[str, str], bool] = {}
    for r in aud.rows:
        out[(r.tunable, r.key)] = out.get((r.tunable, r.key), True) and r.compliant
    return out


def families(snap: Snapshot) -> list[Metric]:
    """Prometheus metric families for a snapshot (pure: testable without a server)."""
    out = [_collector_up(snap), *_audit_families(snap.audit)]
    if isinstance(snap.cpu, CpuReading):
        out += _cpu_families(snap.cpu)
    if isinstance(snap.memory, MemoryReading):
        out += _memory_families(snap.memory)
    if isinstance(snap.hugepages, HugePagesReading):
        out += _hugepage_families(snap.hugepages)
    if isinstance(snap.memlocked, MemLockedReading):
        out.append(_single("memlocked_bytes", float(snap.memlocked.mlocked_bytes)))
    if isinstance(snap.store, StoreReading):
        out += _store_families(snap.store)
    if isinstance(snap.containers, ContainersReading):
        out += _container_families(snap.containers)
    if isinstance(snap.gpu, GpusReading):
        out += _gpu_families(snap.gpu)
    return out


def _single(name: str, value: float) -> Metric:
    """A family of one unlabelled sample."""
    fam = _fam(name, [])
    fam.add_metric([], value)
    return fam


def _collector_up(snap: Snapshot) -> Metric:
    up = _fam("collector_up", ["collector", "reason"])
    for cname in ("cpu", "memory", "hugepages", "memlocked", "store", "containers", "gpu",
                  "audit"):
        v = getattr(snap, cname)
        up.add_metric([cname, v.reason if isinstance(v, Unavailable) else ""],
                      0.0 if isinstance(v, Unavailable) else 1.0)
    return up


def _audit_families(aud: AuditSummary | Unavailable) -> list[Metric]:
    a_up = _single("audit_up", 1.0 if isinstance(aud, AuditSummary) else 0.0)
    if not isinstance(aud, AuditSummary):
        return [a_up]
    # No status label: a label that changes with the value would start a new series.
    comp = _fam("setting_compliant", ["tunable", "key", "profile"])
    for (tunable, key), ok in _compliance(aud).items():
        comp.add_metric([tunable, key, aud.profile], 1.0 if ok else 0.0)
    drift = _fam("drift_settings", ["profile"])
    drift.add_metric([aud.profile], float(aud.drift))
    ts = _fam("audit_last_timestamp_seconds", ["profile"])
    ts.add_metric([aud.profile], aud.at)
    dur = _fam("audit_duration_seconds", ["profile"])
    dur.add_metric([aud.profile], aud.duration_s)
    return [a_up, comp, drift, ts, dur]


def _cpu_families(cpu: CpuReading) -> list[Metric]:
    f = _fam("cpu_frequency_hertz", ["cpu", "source"])
    g = _fam("cpu_governor_info", ["cpu", "governor"])
    for core in cpu.cores:
        if core.cur_freq_hz is not None:
            f.add_metric([str(core.cpu), "cpufreq"], float(core.cur_freq_hz))
        if core.cpuinfo_mhz is not None:
            f.add_metric([str(core.cpu), "cpuinfo"], core.cpuinfo_mhz * 1e6)
        if core.governor:
            g.add_metric([str(core.cpu), core.governor], 1.0)
    return [f, g]


def _memory_families(m: MemoryReading) -> list[Metric]:
    return [_single(name, float(val)) for name, val in (
        ("memory_total_bytes", m.total_bytes), ("memory_available_bytes", m.available_bytes),
        ("swap_total_bytes", m.swap_total_bytes), ("swap_free_bytes", m.swap_free_bytes))]


def _hugepage_families(hp: HugePagesReading) -> list[Metric]:
    sys_labels, node_labels = ["page_size_bytes"], ["node", "page_size_bytes"]
    pool, free, surp, resv = (_fam(n, sys_labels) for n in (
        "hugepages_pool_pages", "hugepages_free_pages", "hugepages_surplus_pages",
        "hugepages_reserved_pages"))
    npool, nfree, nsurp = (_fam(n, node_labels) for n in (
        "hugepages_node_pool_pages", "hugepages_node_free_pages", "hugepages_node_surplus_pages"))
    for p in hp.pools:
        size = str(p.page_size_bytes)
        if p.node is None:
            pool.add_metric([size], float(p.total))
            free.add_metric([size], float(p.free))
            surp.add_metric([size], float(p.surplus))
            if p.reserved is not None:
                resv.add_metric([size], float(p.reserved))
        else:
            lv = [str(p.node), size]
            npool.add_metric(lv, float(p.total))
            nfree.add_metric(lv, float(p.free))
            nsurp.add_metric(lv, float(p.surplus))
    out: list[Metric] = [pool, free, surp, resv, npool, nfree, nsurp]
    if hp.vmemmap_saved_bytes is not None:
        out.append(_single("hugetlb_vmemmap_saved_bytes", float(hp.vmemmap_saved_bytes)))
    return out


def _store_families(st: StoreReading) -> list[Metric]:
    used = _fam("model_store_used_bytes", ["mount", "page_size_bytes"])
    size = _fam("model_store_size_bytes", ["mount", "page_size_bytes"])
    nfiles = _fam("model_store_files", ["mount", "page_size_bytes"])
    for mnt in st.mounts:
        lv = [mnt.mount_point, str(mnt.page_size_bytes)]
        used.add_metric(lv, float(mnt.used_bytes))
        nfiles.add_metric(lv, float(len(mnt.files)))
        if mnt.size_limit_bytes is not None:
            size.add_metric(lv, float(mnt.size_limit_bytes))
    return [used, size, nfiles]


def _container_families(ct: ContainersReading) -> list[Metric]:
    lab = ["container", "id"]
    vm, mem = _fam("container_vmlck_bytes", lab), _fam("container_memory_bytes", lab)
    cpu, cs = _fam("container_cpu_seconds", lab), _fam("container_cpuset_compliant", lab)
    for c in ct.containers:
        lv = [c.name, c.id[:12]]
        vm.add_metric(lv, float(c.vmlck_bytes))
        if c.memory_bytes is not None:
            mem.add_metric(lv, float(c.memory_bytes))
        if c.cpu_seconds is not None:
            cpu.add_metric(lv, c.cpu_seconds)
        cs.add_metric(lv, 1.0 if c.cpuset_compliant else 0.0)
    return [vm, mem, cpu, cs]


def _gpu_families(gpus: GpusReading) -> list[Metric]:
    lab = ["gpu", "uuid", "name"]
    pw, pl = _fam("gpu_power_watts", lab), _fam("gpu_power_limit_watts", lab)
    clk = _fam("gpu_clock_hertz", [*lab, "clock"])
    mode = _fam("gpu_compute_mode", [*lab, "mode"])
    pers = _fam("gpu_persistence_mode", lab)
    for gr in gpus.gpus:
        lv = [str(gr.index), gr.uuid, gr.name]
        if gr.power_w is not None:
            pw.add_metric(lv, gr.power_w)
        if gr.power_limit_w is not None:
            pl.add_metric(lv, gr.power_limit_w)
        if gr.sm_clock_hz is not None:
            clk.add_metric([*lv, "sm"], float(gr.sm_clock_hz))
        if gr.mem_clock_hz is not None:
            clk.add_metric([*lv, "mem"], float(gr.mem_clock_hz))
        if gr.compute_mode is not None:
            for mname in COMPUTE_MODES.values():
                mode.add_metric([*lv, mname], 1.0 if mname == gr.compute_mode else 0.0)
        if gr.persistence is not None:
            pers.add_metric(lv, 1.0 if gr.persistence else 0.0)
    return [pw, pl, clk, mode, pers]


class HosttuneCollector(PromCollector):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        # the HTTP server is threaded; the collectors' caches are not meant for concurrent use
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self.monitor.snapshot()
        yield from families(snap)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no collection at registration time


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9866' / '[::1]:9866' / ':9866' (loopback) -> (addr, port)."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise HosttuneError(f"--listen {listen!r}: expected ADDRESS:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError as err:
        raise HosttuneError(f"--listen {listen!r}: {host!r} is not an IP address") from err
    return host, int(port_s)


def is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


class Exporter(msgspec.Struct):
    monitor: Monitor
    registry: CollectorRegistry
    server: WSGIServer
    thread: Any

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.monitor.audit is not None:
            self.monitor.audit.stop()


def start(monitor: Monitor, addr: str, port: int) -> Exporter:
    """Start serving /metrics on a daemon thread; the audit refreshes on its own thread."""
    from prometheus_client.exposition import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HosttuneCollector(monitor))
    if monitor.audit is not None:
        monitor.audit.start()
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as err:
        if monitor.audit is not None:
            monitor.audit.stop()
        raise HosttuneError(f"cannot listen on {addr}:{port}: {err.strerror}") from err
    return Exporter(monitor, registry, server, thread)
