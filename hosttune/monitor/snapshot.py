"""The status snapshot: independent collectors, each tolerant of its subsystem being absent.

A collector returns its typed reading or :class:`Unavailable` with the reason; one failing
collector never takes the snapshot down. A :class:`Monitor` keeps what does not change between
refreshes (CPU -> cpufreq policy map, huge-page directories, cgroup mount points, Docker names)
so ``watch`` and the exporter pay only for the values that move.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from msgspec import field

from hosttune.host.parsers import (
    SwapDevice,
    format_cpulist,
    parse_cpulist,
    parse_kb_dirname,
    parse_meminfo,
    parse_mountinfo,
    parse_swaps,
)
from hosttune.monitor.docker_api import DockerNames
from hosttune.monitor.parsers import (
    container_id_from_dirname,
    parse_cpuinfo_mhz,
    parse_flat_keyed,
    parse_mount_size,
    parse_pagesize_opt,
    parse_pids,
    parse_status_vmlck,
)

if TYPE_CHECKING:
    from hosttune.host import Host

T = TypeVar("T")


class Unavailable(msgspec.Struct, frozen=True):
    """A subsystem that could not be read, and why ('no cpufreq', 'dockerd not reachable')."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"unavailable": self.reason}


# --- readings ---------------------------------------------------------------------------------
class CoreFreq(msgspec.Struct, frozen=True):
    cpu: int
    cpuinfo_mhz: float | None  # /proc/cpuinfo "cpu MHz"
    cur_freq_hz: int | None  # cpufreq scaling_cur_freq (kHz in sysfs), None without cpufreq
    governor: str | None
    driver: str | None


class CpuReading(msgspec.Struct, frozen=True):
    cores: tuple[CoreFreq, ...]

    @property
    def governors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cores:
            g = c.governor or "none (no cpufreq)"
            out[g] = out.get(g, 0) + 1
        return out


class MemoryReading(msgspec.Struct, frozen=True):
    total_bytes: int
    free_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int
    swaps: tuple[SwapDevice, ...]


class HugePool(msgspec.Struct, frozen=True):
    page_size_bytes: int
    node: int | None  # None: the system-wide pool (/sys/kernel/mm/hugepages)
    total: int
    free: int
    reserved: int | None  # per-node pools have no resv_hugepages file
    surplus: int


class HugePagesReading(msgspec.Struct, frozen=True):
    pools: tuple[HugePool, ...]
    # HugeTLB Vmemmap Optimization: "on" | "off" | "unsupported" | "unknown", and the
    # struct-page memory it saves on the pools now (tunables/hugepages.py hvo_saved_bytes)
    hvo: str = "unknown"
    vmemmap_saved_bytes: int | None = None


class MemLockedReading(msgspec.Struct, frozen=True):
    mlocked_bytes: int  # meminfo "Mlocked" (the kernel's name for what `free` calls MemLocked)


class StoreFile(msgspec.Struct, frozen=True):
    name: str  # path relative to the mount point
    size_bytes: int


class StoreMount(msgspec.Struct, frozen=True):
    mount_point: str
    page_size_bytes: int
    size_limit_bytes: int | None
    used_bytes: int  # file sizes rounded up to whole huge pages (what the pool is charged)
    files: tuple[StoreFile, ...]


class StoreReading(msgspec.Struct, frozen=True):
    mounts: tuple[StoreMount, ...]

    @property
    def used_bytes(self) -> int:
        return sum(m.used_bytes for m in self.mounts)


class ContainerStat(msgspec.Struct, frozen=True):
    id: str
    name: str  # Docker name, or the short id when dockerd is not reachable
    cgroup: str  # cgroup path below the controller mount
    cpu_seconds: float | None
    memory_bytes: int | None
    vmlck_bytes: int  # sum of VmLck over the container's processes
    pids: tuple[int, ...]
    cpuset: tuple[int, ...]  # effective cgroup cpuset
    cpuset_requested: str | None  # Docker HostConfig.CpusetCpus ('' = none), None if unknown
    cpuset_compliant: bool
    cpuset_findings: tuple[str, ...]


class ContainersReading(msgspec.Struct, frozen=True):
    cgroup_version: int
    names_from: str  # "docker" | "cgroup id"
    containers: tuple[ContainerStat, ...]
    note: str = ""


class GpuReading(msgspec.Struct, frozen=True):
    index: int
    name: str
    uuid: str
    power_w: float | None
    power_limit_w: float | None
    sm_clock_hz: int | None
    mem_clock_hz: int | None
    compute_mode: str | None  # DEFAULT | EXCLUSIVE_PROCESS | PROHIBITED | EXCLUSIVE_THREAD
    persistence: bool | None
    unsupported: tuple[str, ...] = ()  # fields NVML answered NOT_SUPPORTED for


class GpusReading(msgspec.Struct, frozen=True):
    gpus: tuple[GpuReading, ...]


class AuditRowBrief(msgspec.Struct, frozen=True):
    tunable: str
    key: str
    status: str
    compliant: bool


class AuditSummary(msgspec.Struct, frozen=True):
    profile: str
    drift: int
    counts: dict[str, int]
    rows: tuple[AuditRowBrief, ...]
    at: float  # unix time the audit finished
    duration_s: float


class Snapshot(msgspec.Struct, frozen=True):
    at: float
    cpu: CpuReading | Unavailable
    memory: MemoryReading | Unavailable
    hugepages: HugePagesReading | Unavailable
    memlocked: MemLockedReading | Unavailable
    store: StoreReading | Unavailable
    containers: ContainersReading | Unavailable
    gpu: GpusReading | Unavailable
    audit: AuditSummary | Unavailable

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(self)
        return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Unavailable):
        return obj.to_json()
    if isinstance(obj, msgspec.Struct):
        out = {k: _jsonable(getattr(obj, k)) for k in obj.__struct_fields__}
        if isinstance(obj, CpuReading):
            out["governors"] = obj.governors
        if isinstance(obj, StoreReading):
            out["used_bytes"] = obj.used_bytes
        return out
    if isinstance(obj, tuple | list):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj


# --- collectors -------------------------------------------------------------------------------
class Collector(Generic[T]):
    """One subsystem. ``read`` may raise anything; :meth:`collect` turns it into Unavailable
    (monitoring must keep running when one subsystem breaks)."""

    name = ""

    def read(self, host: Host) -> T | Unavailable:
        raise NotImplementedError

    def collect(self, host: Host) -> T | Unavailable:
        try:
            return self.read(host)
        except PermissionError as err:
            return Unavailable(f"needs root: {err.filename or err}")
        except Exception as err:  # a broken subsystem must not stop monitoring
            return Unavailable(f"{type(err).__name__}: {err}")


def _int(text: str | None) -> int:
    return int((text or "0").strip() or 0)


class CpuCollector(Collector[CpuReading]):
    name = "cpu"

    def __init__(self) -> None:
        self._policies: list[tuple[str, list[int], str | None]] | None = None

    def _policy_map(self, host: Host) -> list[tuple[str, list[int], str | None]]:
        # policy dir -> CPUs -> driver never change at runtime (CPU hotplug aside): read once.
        if self._policies is None:
            pols = []
            base = "/sys/devices/system/cpu/cpufreq"
            for d in host.listdir(base):
                if not d.startswith("policy"):
                    continue
                cpus = parse_cpulist(host.read_value(f"{base}/{d}/affected_cpus")
                                     or host.read_value(f"{base}/{d}/related_cpus") or "")
                pols.append((f"{base}/{d}", cpus, host.read_value(f"{base}/{d}/scaling_driver")))
            self._policies = pols
        return self._policies

    def read(self, host: Host) -> CpuReading | Unavailable:
        mhz = parse_cpuinfo_mhz(host.read_text("/proc/cpuinfo") or "")
        freq: dict[int, tuple[int | None, str | None, str | None]] = {}
        for pdir, cpus, driver in self._policy_map(host):
            cur = host.read_value(f"{pdir}/scaling_cur_freq")
            gov = host.read_value(f"{pdir}/scaling_governor")
            hz = int(cur) * 1000 if cur and cur.isdigit() else None
            for c in cpus:
                freq[c] = (hz, gov, driver)
        ids = sorted(set(mhz) | set(freq))
        if not ids:
            return Unavailable("no 'cpu MHz' in /proc/cpuinfo and no cpufreq policies")
        return CpuReading(tuple(
            CoreFreq(c, mhz.get(c), *freq.get(c, (None, None, None))) for c in ids))


class MemoryCollector(Collector[MemoryReading]):
    name = "memory"

    def read(self, host: Host) -> MemoryReading | Unavailable:
        text = host.read_text("/proc/meminfo")
        if text is None:
            return Unavailable("/proc/meminfo missing")
        mi = parse_meminfo(text)
        swaps = tuple(parse_swaps(host.read_text("/proc/swaps") or ""))
        return MemoryReading(mi.get("MemTotal", 0), mi.get("MemFree", 0),
                             mi.get("MemAvailable", mi.get("MemFree", 0)),
                             mi.get("SwapTotal", 0), mi.get("SwapFree", 0), swaps)


class MemLockedCollector(Collector[MemLockedReading]):
    name = "memlocked"

    def read(self, host: Host) -> MemLockedReading | Unavailable:
        mi = parse_meminfo(host.read_text("/proc/meminfo") or "")
        if "Mlocked" not in mi:
            return Unavailable("no Mlocked line in /proc/meminfo")
        return MemLockedReading(mi["Mlocked"])


class HugePagesCollector(Collector[HugePagesReading]):
    name = "hugepages"

    def __init__(self) -> None:
        self._dirs: list[tuple[str, int, int | None]] | None = None

    def _layout(self, host: Host) -> list[tuple[str, int, int | None]]:
        if self._dirs is None:
            dirs: list[tuple[str, int, int | None]] = []
            for d in host.listdir("/sys/kernel/mm/hugepages"):
                try:
                    dirs.append((f"/sys/kernel/mm/hugepages/{d}", parse_kb_dirname(d), None))
                except ValueError:
                    continue
            nbase = "/sys/devices/system/node"
            for n in host.listdir(nbase):
                if not (n.startswith("node") and n[4:].isdigit()):
                    continue
                for d in host.listdir(f"{nbase}/{n}/hugepages"):
                    try:
                        dirs.append((f"{nbase}/{n}/hugepages/{d}", parse_kb_dirname(d),
                                     int(n[4:])))
                    except ValueError:
                        continue
            self._dirs = dirs
        return self._dirs

    def read(self, host: Host) -> HugePagesReading | Unavailable:
        layout = self._layout(host)
        if not layout:
            return Unavailable("no /sys/kernel/mm/hugepages (kernel without hugetlb)")
        pools = []
        for d, size, node in layout:
            resv = None if node is not None else _int(host.read_value(f"{d}/resv_hugepages"))
            pools.append(HugePool(size, node, _int(host.read_value(f"{d}/nr_hugepages")),
                                  _int(host.read_value(f"{d}/free_hugepages")), resv,
                                  _int(host.read_value(f"{d}/surplus_hugepages"))))
        pools.sort(key=lambda p: (p.page_size_bytes, -1 if p.node is None else p.node))
        from hosttune.tunables.hugepages import hvo_saved_bytes, hvo_state

        st = hvo_state(host)
        hvo = (st.mode if st.mode in ("unsupported", "unknown") else
               "on" if st.enabled else "off")
        return HugePagesReading(tuple(pools), hvo, hvo_saved_bytes(host))


class StoreCollector(Collector[StoreReading]):
    """The model store: every hugetlbfs mount and the files in it."""

    name = "store"

    def read(self, host: Host) -> StoreReading | Unavailable:
        text = host.read_text("/proc/self/mountinfo")
        if text is None:
            return Unavailable("/proc/self/mountinfo missing")
        mi = parse_meminfo(host.read_text("/proc/meminfo") or "")
        default_ps = mi.get("Hugepagesize", 2 * 1024 * 1024)
        mounts = []
        for m in parse_mountinfo(text):
            if m.fstype != "hugetlbfs":
                continue
            ps = parse_pagesize_opt(m.options.get("pagesize"), default_ps)
            files = [StoreFile(f.rel, f.st.st_size) for f in host.walk_files(m.mount_point)]
            used = sum(-(-f.size_bytes // ps) * ps for f in files)
            mounts.append(StoreMount(m.mount_point, ps,
                                     parse_mount_size(m.options, ps, mi.get("MemTotal", 0)),
                                     used, tuple(sorted(files, key=lambda f: f.name))))
        if not mounts:
            return Unavailable("no hugetlbfs mount")
        return StoreReading(tuple(mounts))


# --- containers -------------------------------------------------------------------------------
def cpuset_findings(name: str, cpus: set[int], online: set[int],
                    siblings: dict[int, tuple[int, ...]],
                    others: dict[str, set[int]], requested: str | None) -> list[str]:
    """Why a container's cpuset is not a clean pinning (empty list: compliant).

    Clean = pinned to a strict subset of the online CPUs, whole physical cores (0-7 / 8-15 /
    16-23 on a CPU whose SMT siblings are N and N+16 splits the pairs 0/16...), no overlap
    with another pinned container, and the cgroup holds what Docker was asked for."""
    out: list[str] = []
    if not cpus or cpus >= online:
        out.append("not pinned (all CPUs)")
        return out
    if requested:
        try:
            if set(parse_cpulist(requested)) != cpus:
                out.append(f"cgroup has {format_cpulist(cpus)}, docker asked {requested}")
        except ValueError:
            out.append(f"unparsable requested cpuset {requested!r}")
    split = sorted({c for c in cpus for s in siblings.get(c, (c,)) if s not in cpus})
    if split:
        out.append(f"splits SMT siblings of CPU(s) {format_cpulist(split)}")
    for other, ocpus in sorted(others.items()):
        if other != name and ocpus and not ocpus >= online and cpus & ocpus:
            out.append(f"overlaps {other} on {format_cpulist(cpus & ocpus)}")
    return out


class _CgroupLayout(msgspec.Struct):
    version: int
    cpuacct: str | None = None
    memory: str | None = None
    cpuset: str | None = None
    unified: str | None = None


class ContainersCollector(Collector[ContainersReading]):
    name = "containers"

    def __init__(self, docker: DockerNames | None = None) -> None:
        self._layout: _CgroupLayout | None = None
        self.docker = docker

    def layout(self, host: Host) -> _CgroupLayout:
        if self._layout is None:
            lay = _CgroupLayout(version=0)
            for m in parse_mountinfo(host.read_text("/proc/self/mountinfo") or ""):
                if m.fstype == "cgroup":
                    for ctl in ("cpuacct", "memory", "cpuset"):
                        if ctl in m.options and getattr(lay, ctl) is None:
                            setattr(lay, ctl, m.mount_point)
                elif m.fstype == "cgroup2" and lay.unified is None:
                    lay.unified = m.mount_point
            # Hybrid hierarchies (systemd's 'hybrid' mode: v1 controllers + an empty cgroup2
            # at .../unified) keep the controllers on v1, where Docker puts the containers.
            lay.version = 1 if lay.memory or lay.cpuacct else (2 if lay.unified else 0)
            self._layout = lay
        return self._layout

    @staticmethod
    def _container_dirs(host: Host, base: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for parent in ("docker", "system.slice"):
            for d in host.listdir(f"{base}/{parent}"):
                cid = container_id_from_dirname(d)
                if cid:
                    out[cid] = f"{parent}/{d}"
        return out

    def read(self, host: Host) -> ContainersReading | Unavailable:
        lay = self.layout(host)
        if lay.version == 0:
            return Unavailable("no cgroup filesystem mounted")
        base = (lay.memory or lay.cpuacct) if lay.version == 1 else lay.unified
        assert base is not None
        dirs = self._container_dirs(host, base)
        names: dict[str, tuple[str, str | None]] = {}
        note = ""
        names_from = "cgroup id"
        if self.docker is not None and dirs:
            got = self.docker.lookup(host, set(dirs))
            if isinstance(got, Unavailable):
                note = got.reason
            else:
                names, names_from = got, "docker"
        facts = host.facts
        online = set(facts.cpu_ids)
        siblings = {c.id: c.siblings for c in facts.cpus}
        raw = []
        for cid, rel in sorted(dirs.items()):
            if lay.version == 1:
                cpu_ns = host.read_value(f"{lay.cpuacct}/{rel}/cpuacct.usage") if lay.cpuacct \
                    else None
                cpu_s = int(cpu_ns) / 1e9 if cpu_ns and cpu_ns.isdigit() else None
                mem = host.read_value(f"{lay.memory}/{rel}/memory.usage_in_bytes") \
                    if lay.memory else None
                cs = host.read_value(f"{lay.cpuset}/{rel}/cpuset.effective_cpus") \
                    or host.read_value(f"{lay.cpuset}/{rel}/cpuset.cpus") if lay.cpuset else None
                procs = host.read_text(f"{base}/{rel}/cgroup.procs") or ""
            else:
                stat = parse_flat_keyed(host.read_text(f"{base}/{rel}/cpu.stat") or "")
                cpu_s = stat["usage_usec"] / 1e6 if "usage_usec" in stat else None
                mem = host.read_value(f"{base}/{rel}/memory.current")
                cs = host.read_value(f"{base}/{rel}/cpuset.cpus.effective")
                procs = host.read_text(f"{base}/{rel}/cgroup.procs") or ""
            pids = tuple(parse_pids(procs))
            vmlck = 0
            for pid in pids:
                try:
                    vmlck += parse_status_vmlck(host.read_text(f"/proc/{pid}/status") or "") or 0
                except OSError:  # the process exited between the two reads
                    continue
            name, requested = names.get(cid, (cid[:12], None))
            cpus = set(parse_cpulist(cs or "")) or set(online)
            raw.append((cid, name, rel, cpu_s, int(mem) if mem and mem.isdigit() else None,
                        vmlck, pids, cpus, requested))
        pinned = {r[1]: r[7] for r in raw}
        items = []
        for cid, name, rel, cpu_s, mem_b, vmlck, pids, cpus, requested in raw:
            fnd = cpuset_findings(name, cpus, online, siblings, pinned, requested)
            items.append(ContainerStat(cid, name, rel, cpu_s, mem_b, vmlck, pids,
                                       tuple(sorted(cpus)), requested, not fnd, tuple(fnd)))
        return ContainersReading(lay.version, names_from, tuple(items), note)


# --- GPU --------------------------------------------------------------------------------------
GpuSource = Callable[["Host"], "GpusReading | Unavailable"]


class GpuCollector(Collector[GpusReading]):
    name = "gpu"

    def __init__(self, source: GpuSource | None = None) -> None:
        if source is None:
            # Through the NVML gateway, one per Monitor (hosttune.monitor.gpu imports this
            # module, hence the late import).
            from hosttune.monitor.gpu import GatewaySource

            source = GatewaySource()
        self.source = source

    def read(self, host: Host) -> GpusReading | Unavailable:
        return self.source(host)


# --- audit ------------------------------------------------------------------------------------
def collect_audit(host: Host, profile: str | None) -> AuditSummary | Unavailable:
    """Audit summary via hosttune.engine.audit (profile: name/path, default 'inference')."""
    from hosttune.engine import audit
    from hosttune.errors import HosttuneError
    from hosttune.profile import load_profile

    t0 = time.monotonic()
    try:
        loaded = load_profile(profile or "inference")
        rep = audit(host, loaded)
    except HosttuneError as err:
        return Unavailable(f"audit failed: {err}")
    except PermissionError as err:
        return Unavailable(f"audit needs root: {err}")
    rows = tuple(AuditRowBrief(r.tunable, r.key, str(r.status), not r.status.is_drift)
                 for r in rep.rows)
    return AuditSummary(rep.profile, len(rep.drift), rep.counts(), rows, time.time(),
                        time.monotonic() - t0)


class AuditCache:
    """The audit is the expensive part (every tunable reads its files): run it at most every
    ``interval_s`` and, in ``start()`` mode, on a background thread so readers never wait."""

    def __init__(self, host: Host, profile: str | None, interval_s: float = 60.0) -> None:
        self.host = host
        self.profile = profile
        self.interval_s = interval_s
        self._value: AuditSummary | Unavailable = Unavailable("audit not run yet")
        # None until the first run: time.monotonic() counts from boot, so a 0.0 start would
        # read as "fresh" for the first interval after boot and skip the audit.
        self._at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def refresh(self) -> AuditSummary | Unavailable:
        try:
            v = collect_audit(self.host, self.profile)
        except Exception as err:  # keep serving; report why
            v = Unavailable(f"audit crashed: {type(err).__name__}: {err}")
        with self._lock:
            self._value, self._at = v, time.monotonic()
            self.runs += 1
        return v

    def get(self) -> AuditSummary | Unavailable:
        """Current value; refreshes synchronously only when no background thread runs."""
        if self._thread is None and (self._at is None
                                     or time.monotonic() - self._at >= self.interval_s):
            return self.refresh()
        with self._lock:
            return self._value

    def start(self) -> None:
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                self.refresh()
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="hosttune-audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- the monitor ------------------------------------------------------------------------------
class Monitor(msgspec.Struct):
    """Holds the collectors (and their caches) for repeated snapshots."""

    host: Host
    profile: str | None = None
    audit_interval_s: float = 60.0
    gpu_source: GpuSource | None = None
    docker: DockerNames | None = None
    with_audit: bool = True
    collectors: dict[str, Collector[Any]] = field(default_factory=dict)
    audit: AuditCache | None = None

    def __post_init__(self) -> None:
        if self.docker is None and not self.host.offline:
            self.docker = DockerNames()
        self.collectors = {
            "cpu": CpuCollector(), "memory": MemoryCollector(),
            "hugepages": HugePagesCollector(), "memlocked": MemLockedCollector(),
            "store": StoreCollector(), "containers": ContainersCollector(self.docker),
            "gpu": GpuCollector(self.gpu_source),
        }
        if self.with_audit:
            self.audit = AuditCache(self.host, self.profile, self.audit_interval_s)

    def snapshot(self) -> Snapshot:
        r = {k: c.collect(self.host) for k, c in self.collectors.items()}
        aud: AuditSummary | Unavailable = (self.audit.get() if self.audit is not None
                                           else Unavailable("audit not requested"))
        return Snapshot(time.time(), r["cpu"], r["memory"], r["hugepages"], r["memlocked"],
                        r["store"], r["containers"], r["gpu"], aud)


def collect(host: Host, profile: str | None = None, *, with_audit: bool = True,
            gpu_source: GpuSource | None = None) -> Snapshot:
    """One snapshot (what `hosttune status` shows)."""
    return Monitor(host, profile, gpu_source=gpu_source, with_audit=with_audit).snapshot()
