"""Container placement: whole physical cores, aligned to L3 domains (CCDs) and NUMA nodes.

Pure: ``plan_workload(facts, workload, ...)`` reads nothing from the machine. The result says
where each llama.cpp worker runs (cpuset.cpus, cpuset.mems), how many threads it uses, what the
system and the GPU-feeding threads keep, and why - or refuses with reasons.

Rules, in order:
- a physical core is never split between two workers, nor between a worker and the reserve
  (SMT siblings share execution units and L1/L2: pinning two containers to 0-7 and 16-23 on a
  CPU whose siblings are N and N+16, such as a 9950X, puts both on the same eight cores);
- a worker lives inside one L3 domain, or - when workers are fewer than domains - on whole L3
  domains of one NUMA node; never across NUMA nodes;
- reserved CPUs (profile ``reserved_cpus``, kernel ``isolcpus``) are never assigned;
- all workers of a kind get the same number of cores (the largest that satisfies the above).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from msgspec import field

from hosttune.containers.cpusets import CpusetFinding, check_cpusets, core_of
from hosttune.host.facts import HostFacts
from hosttune.host.parsers import format_cpulist, parse_cpulist
from hosttune.profile.sizes import format_size, parse_size
from hosttune.tunables.hugepages import pool_bytes

if TYPE_CHECKING:
    from hosttune.profile.schema import CpuWorkers, GpuWorkers, Profile, WorkloadSection

Core = tuple[int, ...]
SHIM_TARGET_DIR = "/opt/hosttune/lib"


class WorkerPlan(msgspec.Struct, frozen=True):
    name: str  # 'cpu-0', 'gpu-0'
    kind: Literal["cpu", "gpu"]
    container: str  # '<project>-cpu-0'
    cpus: tuple[int, ...]  # cpuset.cpus
    cores: tuple[Core, ...]  # the whole physical cores it owns (incl. idle siblings)
    mems: tuple[int, ...]  # cpuset.mems
    l3_domains: tuple[int, ...]
    threads: int  # llama.cpp -t (generation: one per physical core, decode is memory-bound)
    threads_batch: int  # llama.cpp -tb (prompt processing: every CPU of the cpuset)
    memory_bytes: int
    model: str | None  # relative to the store
    model_path: str | None  # inside the container
    gpus: tuple[int, ...] = ()
    gpu_addresses: tuple[str, ...] = ()
    shim: bool = False
    port: int | None = None
    why: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "container": self.container,
            "cpuset_cpus": format_cpulist(self.cpus), "cpuset_mems": format_cpulist(self.mems),
            "cores": [format_cpulist(c) for c in self.cores],
            "l3_domains": list(self.l3_domains), "threads": self.threads,
            "threads_batch": self.threads_batch, "memory_bytes": self.memory_bytes,
            "model": self.model, "model_path": self.model_path, "gpus": list(self.gpus),
            "gpu_addresses": list(self.gpu_addresses), "shim": self.shim, "port": self.port,
            "why": list(self.why),
        }


class ContainerPlan(msgspec.Struct, frozen=True):
    profile: str
    image: str
    project: str
    smt: str
    memlock_mode: Literal["ipc_lock", "ulimit"]
    memlock_bytes: int | None  # ulimit mode; None = unlimited
    mlock: bool
    store: str | None
    store_target: str
    shim: str | None
    tmpfs_bytes: int
    workers: tuple[WorkerPlan, ...]
    system_cpus: tuple[int, ...]
    excluded_cpus: tuple[int, ...]  # reserved_cpus + isolated (whole cores)
    idle_cpus: tuple[int, ...]  # SMT siblings left idle on purpose (smt: leave-idle)
    unassigned_cpus: tuple[int, ...]  # not in any cpuset: free for the OS
    notes: tuple[str, ...] = ()
    refusals: tuple[str, ...] = ()
    findings: tuple[CpusetFinding, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def shim_target(self) -> str | None:
        if not self.shim:
            return None
        return f"{SHIM_TARGET_DIR}/{self.shim.rstrip('/').rsplit('/', 1)[-1]}"

    def worker(self, name: str) -> WorkerPlan:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "ok": self.ok, "image": self.image,
            "project": self.project, "smt": self.smt, "memlock": self.memlock_mode,
            "memlock_bytes": self.memlock_bytes, "mlock": self.mlock, "store": self.store,
            "store_target": self.store_target, "shim": self.shim,
            "workers": [w.to_json() for w in self.workers],
            "system_cpus": format_cpulist(self.system_cpus),
            "excluded_cpus": format_cpulist(self.excluded_cpus),
            "idle_cpus": format_cpulist(self.idle_cpus),
            "unassigned_cpus": format_cpulist(self.unassigned_cpus),
            "notes": list(self.notes), "refusals": list(self.refusals),
            "findings": [f.to_json() for f in self.findings],
        }


# --- topology as placement sees it ---------------------------------------------------------


class _Domain(msgspec.Struct):
    index: int  # L3 domain index (or -1 - node when the host does not expose L3)
    node: int
    cores: list[Core]  # available cores, ascending
    full: int  # cores before reservations (available ones only)


def _domains(facts: HostFacts, excluded: frozenset[int]) -> list[_Domain]:
    by_id = {c.id: c for c in facts.cpus}
    groups: dict[tuple[int, int], list[Core]] = defaultdict(list)
    for core in facts.physical_cores:
        if set(core) & excluded:
            continue
        first = by_id[core[0]]
        key = (first.l3 if first.l3 >= 0 else -1 - first.node, first.node)
        groups[key].append(core)
    out = [_Domain(idx, node, sorted(cores), len(cores)) for (idx, node), cores in groups.items()]
    return sorted(out, key=lambda d: (d.node, d.index if d.index >= 0 else 10**6))


class _Shape(msgspec.Struct, frozen=True):
    kind: Literal["in-domain", "whole-domains"]
    size: int  # cores (in-domain) or domains (whole-domains)
    cores: int  # cores per worker (for ordering and messages)

    def describe(self) -> str:
        if self.kind == "in-domain":
            return f"{self.cores} core(s) inside one L3 domain"
        return f"{self.size} whole L3 domains ({self.cores} cores) of one NUMA node"


def _capacity(avail: dict[int, int], doms: list[_Domain], shape: _Shape) -> int:
    if shape.kind == "in-domain":
        return sum(avail[i] // shape.size for i in range(len(doms)))
    per_node: dict[int, int] = defaultdict(int)
    for i, d in enumerate(doms):
        if avail[i] == d.full and d.full > 0:
            per_node[d.node] += 1
    return sum(n // shape.size for n in per_node.values())


class _Reservation(msgspec.Struct, frozen=True):
    name: str  # 'system', 'gpu-0'
    cores: int
    nodes: frozenset[int] | None  # allowed NUMA nodes (None: any)


# (cores left per domain index, reservation name -> cores it took per domain index)
_Placed = tuple[dict[int, int], dict[str, dict[int, int]]]


def _place_reservations(doms: list[_Domain], reservations: list[_Reservation], shape: _Shape
                        ) -> _Placed | None:
    """Greedy, one core at a time: take each reserved core from the domain where it costs the
    fewest worker slots of ``shape``; ties go to a domain this reservation (then any reservation)
    already uses, then to the last domain - so reservations pack together at the end."""
    avail = {i: d.full for i, d in enumerate(doms)}
    taken: dict[str, dict[int, int]] = {}
    touched: set[int] = set()
    for r in reservations:
        mine: dict[int, int] = defaultdict(int)
        for _ in range(r.cores):
            best: tuple[int, int, int, int] | None = None
            for i, d in enumerate(doms):
                if avail[i] <= 0 or (r.nodes is not None and d.node not in r.nodes):
                    continue
                avail[i] -= 1
                cap = _capacity(avail, doms, shape)
                avail[i] += 1
                score = (cap, int(i in mine), int(i in touched), i)
                if best is None or score > best:
                    best = score
            if best is None:
                return None
            i = best[3]
            avail[i] -= 1
            mine[i] += 1
            touched.add(i)
        taken[r.name] = dict(mine)
    return avail, taken


def _shapes(doms: list[_Domain], cores: int | str) -> list[_Shape]:
    max_full = max((d.full for d in doms), default=0)
    per_node: dict[int, int] = defaultdict(int)
    for d in doms:
        per_node[d.node] += 1
    min_full = min((d.full for d in doms if d.full), default=0)
    shapes = [_Shape("in-domain", k, k) for k in range(1, max_full + 1)]
    shapes += [_Shape("whole-domains", m, m * min_full)
               for m in range(2, max(per_node.values(), default=0) + 1)]
    if cores != "auto":
        assert isinstance(cores, int)
        shapes = [s for s in shapes if s.cores == cores and
                  (s.kind == "in-domain" or len({d.full for d in doms}) == 1)]
    # biggest workers first; at equal size, inside one L3 domain beats several
    return sorted(shapes, key=lambda s: (-s.cores, s.kind != "in-domain"))


def _search(doms: list[_Domain], reservations: list[_Reservation], shapes: list[_Shape], n: int
            ) -> tuple[_Shape | None, _Placed | None, list[str]]:
    """The largest shape of which ``n`` workers fit beside the reserve."""
    rejected: list[str] = []
    for s in shapes:
        res = _place_reservations(doms, reservations, s)
        if res is None:
            rejected.append(f"{s.describe()}: the reserve does not fit")
            continue
        cap = _capacity(res[0], doms, s)
        if cap >= n:
            return s, res, rejected
        rejected.append(f"{s.describe()}: only {cap} such slot(s) after the reserve")
    return None, None, rejected


# --- the planner -----------------------------------------------------------------------------


def hugepage_pool_bytes(profile: Profile, facts: HostFacts) -> int:
    """Huge-page memory the profile keeps out of reach of workers (or what is allocated now,
    whichever is larger). hugetlb pages are not charged to memory.max, so they count here and
    not in the workers' mem_limit. The pool is sized by the hugepages family itself, so the
    planner keeps out exactly what apply allocates."""
    return max(facts.meminfo.get("Hugetlb", 0), pool_bytes(profile, facts))


def plan_from_profile(profile: Profile, facts: HostFacts) -> ContainerPlan:
    from hosttune.errors import ProfileError

    wl = profile.workload
    if wl is None:
        raise ProfileError(f"profile {profile.name!r} has no 'workload' section: nothing to "
                           "place", key="workload")
    store = wl.store
    if store is None and profile.hugetlbfs and profile.hugetlbfs.mounts:
        store = profile.hugetlbfs.mounts[0].path
    return plan_workload(facts, wl, profile_name=profile.name, store=store,
                         hugepage_bytes=hugepage_pool_bytes(profile, facts))


def plan_workload(facts: HostFacts, wl: WorkloadSection, *, profile_name: str = "",
                  store: str | None = None, hugepage_bytes: int = 0) -> ContainerPlan:
    """The workload placed on ``facts`` by the rules above, or refused with the reasons."""
    log = _Log()
    store = store if store is not None else wl.store
    excl = _exclusion(facts, wl, log)
    doms = _domains(facts, excl.cpus)
    if not facts.smt:
        log.note("no SMT on this host: one CPU per core, the smt policy changes nothing")
    reserve = _reserve(facts, wl, doms, log)
    n_cpu, probe = _cpu_worker_count(wl, doms, reserve.reservations, log)
    choice = _ShapeChoice(n_cpu, None, None, [])
    if not log.refusals and wl.cpu_workers.cpusets is None:
        choice = _choose_shape(wl.cpu_workers, doms, reserve.reservations, n_cpu, probe, log)
    cores = _place_cores(facts, wl.cpu_workers, doms, reserve.reservations, choice, log)

    cpu_models = _models_for("cpu_workers", wl.cpu_workers.models, choice.n_cpu, log)
    gpu_models = _models_for("gpu_workers", wl.gpu_workers.models, wl.gpu_workers.count, log)
    if (choice.n_cpu or wl.gpu_workers.count) and not store:
        log.refuse("no model store: set workload.store or a hugetlbfs mount in the profile")
    cpu_mem, gpu_mem, tmpfs_bytes = _sizes(wl, log)

    maker = _WorkerMaker(facts, wl, store, log)
    workers: list[WorkerPlan] = []
    # hand-made cpusets become workers even after a refusal: check_cpusets reports on them
    if not log.refusals or wl.cpu_workers.cpusets is not None:
        workers += _cpu_workers(maker, wl.cpu_workers, cores.cpu_blocks, cpu_mem, cpu_models)
        workers += _gpu_workers(maker, facts, reserve.gpus, cores.gpu, gpu_mem, gpu_models)
    _check_memory(facts, workers, hugepage_bytes, log)
    findings: list[CpusetFinding] = []
    if wl.cpu_workers.cpusets is not None and workers:
        findings = _check_handmade(facts, workers, excl, cores.system, log)
    memlock_bytes = _memlock(wl, log)

    sys_cpus = tuple(sorted(x for c in cores.system for x in c))
    unassigned = _unassigned(facts, workers, sys_cpus, maker.idle, excl, log)
    return ContainerPlan(
        profile=profile_name, image=wl.image, project=wl.project, smt=wl.smt,
        memlock_mode=wl.memlock, memlock_bytes=memlock_bytes, mlock=wl.mlock, store=store,
        store_target=wl.store_target, shim=wl.shim, tmpfs_bytes=tmpfs_bytes,
        workers=tuple(workers), system_cpus=sys_cpus, excluded_cpus=tuple(sorted(excl.cpus)),
        idle_cpus=tuple(sorted(maker.idle)), unassigned_cpus=tuple(unassigned),
        notes=tuple(log.notes), refusals=tuple(dict.fromkeys(log.refusals)),
        findings=tuple(findings))


# --- plan_workload's steps -------------------------------------------------------------------
# Each step adds its notes and refusals to one _Log, in the order the plan lists them. Later
# steps look at whether an earlier one refused: no shape search and no workers after a refusal.


class _Log(msgspec.Struct):
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    def refuse(self, msg: str) -> None:
        self.refusals.append(msg)


class _Exclusion(msgspec.Struct, frozen=True):
    reserved: frozenset[int]  # workload.reserved_cpus as written (may name absent CPUs)
    isolated: frozenset[int]  # kernel isolcpus
    cpus: frozenset[int]  # the whole physical cores of both: never in any cpuset


def _exclusion(facts: HostFacts, wl: WorkloadSection, log: _Log) -> _Exclusion:
    """CPUs never assigned: whole cores of reserved_cpus and isolcpus."""
    known = {c.id for c in facts.cpus}
    try:
        reserved = set(parse_cpulist(wl.reserved_cpus))
    except ValueError as err:
        reserved = set()
        log.refuse(f"workload.reserved_cpus {wl.reserved_cpus!r}: {err}")
    unknown = sorted(reserved - known)
    if unknown:
        log.note(f"reserved_cpus {format_cpulist(unknown)} do not exist on this host")
    isolated = set(facts.isolated_cpus)
    if isolated:
        log.note(f"CPUs {format_cpulist(sorted(isolated))} are isolated (isolcpus): the "
                 "scheduler does not balance threads across them, so no worker is placed there")
    excluded_cores = [c for c in facts.physical_cores if set(c) & (reserved | isolated)]
    excluded = {x for c in excluded_cores for x in c}
    if excluded_cores and reserved:
        log.note(f"reserved CPUs {format_cpulist(sorted(reserved & known))}: their whole "
                 f"physical cores ({format_cpulist(sorted(excluded))}) stay out of every worker")
    return _Exclusion(frozenset(reserved), frozenset(isolated), frozenset(excluded))


class _Reserve(msgspec.Struct, frozen=True):
    # (worker number, GPU) of each GPU worker whose GPU exists, in worker order: the number
    # names the worker and its feed-core reservation (gpu-N), also when an earlier one is gone
    gpus: list[tuple[int, int]]
    reservations: list[_Reservation]  # each GPU worker's feed cores, then the system's


def _reserve(facts: HostFacts, wl: WorkloadSection, doms: list[_Domain], log: _Log
             ) -> _Reserve:
    gpus, reservations = _gpu_reservations(facts, wl.gpu_workers, doms, log)
    if wl.system_cores:
        reservations.append(_Reservation("system", wl.system_cores, None))
    else:
        log.note("system_cores: 0 - the OS, dockerd and IRQs share the workers' cores")
    return _Reserve(gpus, reservations)


def _gpu_reservations(facts: HostFacts, spec: GpuWorkers, doms: list[_Domain], log: _Log
                      ) -> tuple[list[tuple[int, int]], list[_Reservation]]:
    """GPU workers and their feed cores, kept on the GPU's NUMA node when it has cores."""
    gpus: list[tuple[int, int]] = []
    reservations: list[_Reservation] = []
    if not spec.count:
        return gpus, reservations
    if not facts.gpus:
        log.refuse(f"{spec.count} GPU worker(s) asked for, but no NVIDIA GPU was found in "
                   "/sys/bus/pci/devices (vendor 0x10de, class 0x03xxxx)")
        return gpus, reservations
    wanted = list(range(spec.count)) if spec.gpus == "auto" else list(spec.gpus)
    if len(wanted) != spec.count:
        log.refuse(f"gpu_workers.gpus lists {len(wanted)} GPU(s) for {spec.count} worker(s)")
    for i, g in enumerate(wanted[:spec.count]):
        if not 0 <= g < len(facts.gpus):
            log.refuse(f"gpu-{i}: GPU {g} does not exist (found {len(facts.gpus)}: "
                       f"{', '.join(x.address for x in facts.gpus)})")
            continue
        gpus.append((i, g))
        node = facts.gpus[g].numa_node
        nodes = frozenset({node}) if node >= 0 and any(d.node == node for d in doms) else None
        reservations.append(_Reservation(f"gpu-{i}", spec.feed_cores, nodes))
    return gpus, reservations


def _cpu_worker_count(wl: WorkloadSection, doms: list[_Domain],
                      reservations: list[_Reservation], log: _Log
                      ) -> tuple[int, _Placed | None]:
    """How many CPU workers: one per hand-made cpuset, the count asked for, or ('auto') one per
    L3 domain the reserve leaves a core in. Also the reserve placed as 'auto' probed it."""
    spec = wl.cpu_workers
    probe: _Placed | None = None
    total_cores = sum(d.full for d in doms)
    reserved_cores = sum(r.cores for r in reservations)
    if spec.cpusets is not None:
        n_cpu = len(spec.cpusets)
        if spec.count not in (None, "auto", n_cpu):
            log.refuse(f"cpu_workers.cpusets lists {n_cpu} cpuset(s) for {spec.count} "
                       "worker(s)")
    elif spec.count == "auto":
        probe = _place_reservations(doms, reservations, _Shape("in-domain", 1, 1))
        n_cpu = sum(1 for i in range(len(doms)) if probe and probe[0][i] > 0)
    else:
        n_cpu = spec.count or 0
    if n_cpu == 0 and wl.gpu_workers.count == 0:
        log.refuse("the workload asks for no workers (cpu_workers.count and gpu_workers.count "
                   "are 0)")
    if reserved_cores + n_cpu > total_cores and spec.cpusets is None:
        log.refuse(
            f"{n_cpu} CPU worker(s) need at least {n_cpu} whole core(s) and the reserve "
            f"{reserved_cores} ({', '.join(f'{r.name}: {r.cores}' for r in reservations)}), "
            f"but this host has {total_cores} usable physical core(s)")
    return n_cpu, probe


class _ShapeChoice(msgspec.Struct, frozen=True):
    n_cpu: int  # 'auto' may settle on fewer workers than it probed
    shape: _Shape | None  # None: nothing searched, or nothing fits
    placed: _Placed | None  # the reserve placed for that shape
    rejected: list[str]  # the larger shapes tried first, and why each did not fit


def _choose_shape(spec: CpuWorkers, doms: list[_Domain], reservations: list[_Reservation],
                  n_cpu: int, probe: _Placed | None, log: _Log) -> _ShapeChoice:
    """The largest worker shape of which ``n_cpu`` workers fit beside the reserve."""
    shapes = _shapes(doms, spec.cores)
    if not shapes and spec.cores != "auto":
        sizes = sorted({d.full for d in doms})
        log.refuse(
            f"cpu_workers.cores {spec.cores}: L3 domains here hold {sizes} core(s); a worker "
            f"gets at most one domain's cores or whole domains of one NUMA node (use "
            f"<= {max(sizes)} or a multiple of {min(sizes)})")
    choice = _ShapeChoice(n_cpu, None, None, [])
    if spec.count == "auto" and n_cpu:
        # one worker per L3 domain: per domain with free cores, or per domain the reserve
        # left whole - whichever puts more cores to work
        whole = sum(1 for i, d in enumerate(doms) if probe and probe[0][i] == d.full)
        best_total = -1
        for n in sorted({n_cpu, whole} - {0}, reverse=True):
            shape, placed, rejected = _search(doms, reservations, shapes, n)
            if shape is not None and n * shape.cores > best_total:
                best_total = n * shape.cores
                choice = _ShapeChoice(n, shape, placed, rejected)
        log.note(f"cpu_workers.count auto: one worker per L3 domain -> {choice.n_cpu}")
    else:
        choice = _ShapeChoice(n_cpu, *_search(doms, reservations, shapes, n_cpu))
    if choice.shape is None and shapes:
        why = choice.rejected[-1] if choice.rejected else "no shape fits"
        log.refuse(f"{choice.n_cpu} CPU worker(s) do not fit without splitting a core, an L3 "
                   f"domain or a NUMA node ({why})")
    return choice


class _Cores(msgspec.Struct):
    """Whole physical cores by owner: the system's, each GPU worker's feed cores, and one block
    per CPU worker with the NUMA node it sits on."""
    system: list[Core] = field(default_factory=list)
    gpu: dict[str, list[Core]] = field(default_factory=dict)
    cpu_blocks: list[tuple[list[Core], int]] = field(default_factory=list)  # (cores, node)

    def reserve(self, name: str, cores: list[Core]) -> None:
        (self.system if name == "system" else self.gpu.setdefault(name, [])).extend(sorted(cores))


def _place_cores(facts: HostFacts, spec: CpuWorkers, doms: list[_Domain],
                 reservations: list[_Reservation], choice: _ShapeChoice, log: _Log) -> _Cores:
    """Materialise the cores: hand-made cpusets as given, else the chosen shape's blocks."""
    if spec.cpusets is not None:
        return _handmade_cores(facts, spec.cpusets, doms, reservations, log)
    if choice.shape is None or choice.placed is None:
        return _Cores()
    cores = _planned_cores(doms, reservations, choice.shape, choice.placed, choice.n_cpu)
    if choice.n_cpu:
        msg = f"{choice.n_cpu} CPU worker(s) x {choice.shape.describe()}"
        if choice.rejected:
            msg += f"; larger workers do not fit: {choice.rejected[-1]}"
        log.note(msg)
    return cores


def _planned_cores(doms: list[_Domain], reservations: list[_Reservation], shape: _Shape,
                   placed: _Placed, n_cpu: int) -> _Cores:
    avail, taken = placed
    cores = _Cores()
    heads = _take_reserve(doms, reservations, taken, cores)
    if shape.kind == "in-domain":
        per_node = _in_domain_blocks(doms, heads, shape)
    else:
        per_node = _whole_domain_blocks(doms, avail, heads, shape)
    cores.cpu_blocks = sorted(_round_robin(per_node)[:n_cpu], key=lambda b: b[0][0][0])
    return cores


def _take_reserve(doms: list[_Domain], reservations: list[_Reservation],
                  taken: dict[str, dict[int, int]], cores: _Cores) -> dict[int, list[Core]]:
    """Give each reservation the cores _place_reservations counted for it, from the top of each
    domain; what is left of each domain (ascending) is for the workers."""
    heads: dict[int, list[Core]] = {}
    for i, d in enumerate(doms):
        tail = list(reversed(d.cores))
        for r in reservations:
            n = taken.get(r.name, {}).get(i, 0)
            got, tail = tail[:n], tail[n:]
            cores.reserve(r.name, got)
        heads[i] = sorted(tail)
    return heads


def _in_domain_blocks(doms: list[_Domain], heads: dict[int, list[Core]], shape: _Shape
                      ) -> dict[int, list[list[Core]]]:
    # round-robin over the node's L3 domains: with fewer workers than slots, each gets
    # a CCD of its own (its own L3 and its own link to the memory controllers)
    per_node: dict[int, list[list[Core]]] = defaultdict(list)
    slots: dict[int, list[list[Core]]] = {}
    for i in range(len(doms)):
        h = heads[i]
        slots[i] = [h[b * shape.size:(b + 1) * shape.size] for b in range(len(h) // shape.size)]
    depth = max((len(v) for v in slots.values()), default=0)
    for b in range(depth):
        for i, d in enumerate(doms):
            if b < len(slots[i]):
                per_node[d.node].append(slots[i][b])
    return per_node


def _whole_domain_blocks(doms: list[_Domain], avail: dict[int, int],
                         heads: dict[int, list[Core]], shape: _Shape
                         ) -> dict[int, list[list[Core]]]:
    """Groups of ``shape.size`` domains of one node that the reserve left whole."""
    per_node: dict[int, list[list[Core]]] = defaultdict(list)
    for node in sorted({d.node for d in doms}):
        full = [i for i, d in enumerate(doms) if d.node == node and avail[i] == d.full
                and d.full > 0]
        for b in range(len(full) // shape.size):
            group = full[b * shape.size:(b + 1) * shape.size]
            per_node[node].append(sorted(c for i in group for c in heads[i]))
    return per_node


def _round_robin(per_node: dict[int, list[list[Core]]]) -> list[tuple[list[Core], int]]:
    # round-robin over NUMA nodes: workers spread over the memory controllers
    rr: list[tuple[list[Core], int]] = []
    queues = {n: list(b) for n, b in sorted(per_node.items())}
    while any(queues.values()):
        for n in sorted(queues):
            if queues[n]:
                rr.append((queues[n].pop(0), n))
    return rr


def _handmade_cores(facts: HostFacts, cpusets: list[str], doms: list[_Domain],
                    reservations: list[_Reservation], log: _Log) -> _Cores:
    by_id = {c.id: c for c in facts.cpus}
    cmap = core_of(facts)
    cores = _Cores()
    for i, text in enumerate(cpusets):
        try:
            cpus = parse_cpulist(text)
        except ValueError as err:
            log.refuse(f"cpu_workers.cpusets[{i}] {text!r}: {err}")
            continue
        cores_used = sorted({cmap.get(c, (c,)) for c in cpus})
        node = by_id[cpus[0]].node if cpus and cpus[0] in by_id else 0
        cores.cpu_blocks.append(([tuple(c) for c in cores_used], node))
    log.note("cpu_workers.cpusets given by hand: checked, not planned")
    # the reserve still comes from the cores nobody asked for, at the end
    used = {x for b, _ in cores.cpu_blocks for c in b for x in c}
    free = [c for d in reversed(doms) for c in reversed(d.cores) if not set(c) & used]
    for r in reservations:
        got, free = free[:r.cores], free[r.cores:]
        cores.reserve(r.name, got)
        if len(got) < r.cores:
            log.refuse(f"{r.name}: {r.cores} core(s) to reserve, {len(got)} left outside the "
                       "hand-made cpusets")
    return cores


# -- models, shim, memory ------------------------------------------------------------------


def _models_for(group: str, models: list[str], n: int, log: _Log) -> list[str | None]:
    if not models:
        if n:
            log.note(f"{group}: no model configured - MODEL_PATH is left out")
        return [None] * n
    if len(models) == 1:
        if n > 1:
            log.note(f"{group}: all {n} workers map the same model file: one copy in huge "
                     "pages, shared MAP_SHARED")
        return [models[0]] * n
    if len(models) != n:
        log.refuse(f"{group}.models lists {len(models)} model(s) for {n} worker(s) (give one "
                   "per worker, or one for all)")
        return [None] * n
    return list(models)


def _model_path(model: str | None, store: str | None, store_target: str, log: _Log
                ) -> str | None:
    """Where ``model`` appears inside the container; None (refused) when outside the store."""
    if model is None:
        return None
    if model.startswith("/"):
        if store and model.startswith(store.rstrip("/") + "/"):
            rel = model[len(store.rstrip("/")) + 1:]
        else:
            log.refuse(f"model {model} is not inside the store {store}")
            return None
    else:
        rel = model
    if ".." in rel.split("/"):
        log.refuse(f"model {model}: '..' leaves the store")
        return None
    return f"{store_target.rstrip('/')}/{rel}"


def _sizes(wl: WorkloadSection, log: _Log) -> tuple[int, int, int]:
    """(cpu worker mem_limit, gpu worker mem_limit, tmpfs size) in bytes."""
    try:
        return (parse_size(wl.cpu_workers.memory), parse_size(wl.gpu_workers.memory),
                parse_size(wl.tmpfs_size))
    except ValueError as err:  # validated by the schema; kept for direct callers
        log.refuse(str(err))
        return 0, 0, 0


# -- workers ----------------------------------------------------------------------------------


class _WorkerMaker:
    """Builds each WorkerPlan and its reasons; numbers the ports in order and collects the SMT
    siblings left idle (smt: leave-idle) across all workers."""

    def __init__(self, facts: HostFacts, wl: WorkloadSection, store: str | None, log: _Log
                 ) -> None:
        self.facts = facts
        self.wl = wl
        self.store = store
        self.log = log
        self.by_id = {c.id: c for c in facts.cpus}
        self.keep = wl.smt == "keep-together"
        self.idle: set[int] = set()
        self.port = wl.port_base

    def make(self, name: str, kind: Literal["cpu", "gpu"], cores: list[Core], mem: int,
             model: str | None, gpus: tuple[int, ...], why: list[str],
             handmade: list[int] | None) -> WorkerPlan:
        """``why``: the caller's reasons; a planned cpuset's placement goes before them, its
        SMT policy after."""
        by_id = self.by_id
        cpus = self._cpuset(cores, handmade)
        mems = sorted({by_id[c].node for c in cpus if c in by_id})
        l3s = sorted({by_id[c].l3 for c in cpus if c in by_id and by_id[c].l3 >= 0})
        if handmade is None:
            why.insert(0, self._why_placement(cores, cpus, mems, l3s))
            why.extend(self._why_smt(cores))
        why.extend(self._why_limits(mems, len(cores), len(cpus), mem))
        path = _model_path(model, self.store, self.wl.store_target, self.log)
        shim = bool(model) and any(str(model).endswith(s) for s in self.wl.shim_for)
        why.extend(self._why_model(name, model, path, shim))
        return WorkerPlan(
            name=name, kind=kind, container=f"{self.wl.project}-{name}", cpus=tuple(cpus),
            cores=tuple(tuple(c) for c in cores), mems=tuple(mems), l3_domains=tuple(l3s),
            threads=len(cores), threads_batch=len(cpus), memory_bytes=mem, model=model,
            model_path=path, gpus=gpus,
            gpu_addresses=tuple(self.facts.gpus[g].address for g in gpus),
            shim=shim and bool(self.wl.shim), port=self._next_port(), why=tuple(why))

    def _cpuset(self, cores: list[Core], handmade: list[int] | None) -> list[int]:
        if handmade is not None:
            return sorted(handmade)
        if self.keep:
            return sorted(x for c in cores for x in c)
        self.idle.update(x for c in cores for x in c[1:])
        return sorted(c[0] for c in cores)

    def _next_port(self) -> int | None:
        if self.port is None:
            return None
        self.port += 1
        return self.port - 1

    def _why_placement(self, cores: list[Core], cpus: list[int], mems: list[int],
                       l3s: list[int]) -> str:
        doms_txt = ", ".join(f"L3 #{i} ({format_cpulist(self.facts.l3_domains[i])})"
                             for i in l3s) or "the only cache domain"
        return (f"{len(cores)} whole physical core(s) {format_cpulist(cpus)} in {doms_txt}, "
                f"NUMA node {format_cpulist(mems)}")

    def _why_smt(self, cores: list[Core]) -> list[str]:
        if not self.facts.smt:
            return []
        sib = sorted(x for c in cores for x in c[1:])
        if self.keep:
            return [f"smt keep-together: siblings {format_cpulist(sib)} are in the cpuset, so "
                    "no other container shares these cores"]
        return [f"smt leave-idle: siblings {format_cpulist(sib)} stay idle (in no cpuset): "
                "full core resources for one thread each"]

    def _why_limits(self, mems: list[int], threads: int, tb: int, mem: int) -> list[str]:
        return [
            f"cpuset.mems {format_cpulist(mems)}: memory from the node its cores sit on "
            "(compose cannot set it: `docker update --cpuset-mems` does)"
            if len(self.facts.nodes) > 1 else
            f"cpuset.mems {format_cpulist(mems)}: the only NUMA node",
            f"llama.cpp threads {threads} (one per physical core: decode is memory-bound) and "
            f"threads-batch {tb} (every CPU of the cpuset for prompt processing)",
            f"mem_limit {format_size(mem)}: KV cache and buffers - the model on hugetlbfs is "
            "charged to the hugetlb cgroup, not to memory.max"]

    def _why_model(self, name: str, model: str | None, path: str | None, shim: bool
                   ) -> list[str]:
        why = []
        if path:
            why.append(f"MODEL_PATH {path} (read-only bind of the huge-page store)")
        if shim:
            if self.wl.shim:
                why.append(f"LD_PRELOAD {self.wl.shim}: {model} has a strict loader that "
                           "refuses a padded hugetlbfs file")
            else:
                self.log.refuse(f"{name}: {model} has a strict loader (refuses the padded "
                                "hugetlbfs file) and workload.shim is not set")
        elif path:
            why.append("no LD_PRELOAD: llama.cpp's GGUF loader accepts the padded hugetlbfs "
                       "file as it is")
        return why


def _cpu_workers(maker: _WorkerMaker, spec: CpuWorkers, blocks: list[tuple[list[Core], int]],
                 mem: int, models: list[str | None]) -> list[WorkerPlan]:
    out: list[WorkerPlan] = []
    # the blocks of hand-made cpusets are those that parse, in order (_handmade_cores refuses
    # the others)
    handmade = _parsed(spec.cpusets) if spec.cpusets is not None else None
    for i, (cores, _node) in enumerate(blocks):
        out.append(maker.make(f"cpu-{i}", "cpu", cores, mem,
                              models[i] if i < len(models) else None, (), [],
                              handmade[i] if handmade is not None else None))
    return out


def _parsed(cpusets: list[str]) -> list[list[int]]:
    out = []
    for text in cpusets:
        try:
            out.append(parse_cpulist(text))
        except ValueError:
            continue
    return out


def _gpu_workers(maker: _WorkerMaker, facts: HostFacts, gpus: list[tuple[int, int]],
                 feed: dict[str, list[Core]], mem: int, models: list[str | None]
                 ) -> list[WorkerPlan]:
    out: list[WorkerPlan] = []
    for i, g in gpus:
        gpu = facts.gpus[g]
        where = (f"NUMA node {gpu.numa_node}" if gpu.numa_node >= 0 else
                 "no NUMA node reported (single-node host)")
        out.append(maker.make(
            f"gpu-{i}", "gpu", feed.get(f"gpu-{i}", []), mem,
            models[i] if i < len(models) else None, (g,),
            [f"GPU {g} ({gpu.address}, {where}): its feed cores are this worker's cpuset"],
            None))
    return out


# -- checks on the workers ------------------------------------------------------------------


def _check_memory(facts: HostFacts, workers: list[WorkerPlan], hugepage_bytes: int, log: _Log
                  ) -> None:
    """The workers' mem_limit fit in RAM beside the huge-page pool, in total and per node."""
    if not workers:
        return
    total_mem = sum(w.memory_bytes for w in workers)
    room = facts.mem_total_bytes - hugepage_bytes
    if total_mem > room:
        log.refuse(
            f"workers' mem_limit add up to {format_size(total_mem)}, but RAM "
            f"{format_size(facts.mem_total_bytes)} minus the huge-page pool "
            f"{format_size(hugepage_bytes)} leaves {format_size(room)}")
    elif room - total_mem < facts.mem_total_bytes // 10:
        log.note(f"workers' mem_limit ({format_size(total_mem)}) leave only "
                 f"{format_size(room - total_mem)} for the OS beside the huge-page pool")
    mem_nodes = [n for n in facts.nodes if n.mem_total_bytes > 0]
    if len(mem_nodes) > 1:
        per_node_pool = hugepage_bytes // len(mem_nodes)
        for nd in mem_nodes:
            need = sum(w.memory_bytes for w in workers if nd.id in w.mems)
            if need > nd.mem_total_bytes - per_node_pool:
                log.refuse(
                    f"NUMA node {nd.id}: workers' mem_limit {format_size(need)} exceed its "
                    f"{format_size(nd.mem_total_bytes)} minus its share of the huge-page "
                    f"pool {format_size(per_node_pool)}")


def _check_handmade(facts: HostFacts, workers: list[WorkerPlan], excl: _Exclusion,
                    system: list[Core], log: _Log) -> list[CpusetFinding]:
    """Hand-made cpusets: flag overlap and sibling sharing."""
    known = {c.id for c in facts.cpus}
    sys_cpus = {x for c in system for x in c}
    findings = check_cpusets(
        facts, {w.container: w.cpus for w in workers},
        reserved=sorted((excl.reserved & known) | excl.isolated | sys_cpus),
        reserved_name="system/reserved")
    for f in findings:
        (log.refusals if f.severity == "error" else log.notes).append(f.message)
    return findings


def _memlock(wl: WorkloadSection, log: _Log) -> int | None:
    """The memlock ulimit in bytes (None: unlimited), with a note on how workers may mlock."""
    memlock_bytes: int | None = None
    if wl.memlock_limit != "unlimited":
        memlock_bytes = parse_size(wl.memlock_limit)
    if wl.memlock == "ipc_lock":
        log.note("memlock: cap_add IPC_LOCK - workers may mlock regardless of RLIMIT_MEMLOCK, "
                 "so the daemon's own limit does not matter")
        return memlock_bytes
    lim = "unlimited" if memlock_bytes is None else format_size(memlock_bytes)
    log.note(f"memlock: ulimit {lim} - runc sets it from dockerd, which cannot exceed its own "
             "hard limit without CAP_SYS_RESOURCE (the memlock section's LimitMEMLOCK drop-in)")
    if wl.mlock and memlock_bytes is not None:
        # do_mlock() (mm/mlock.c) checks the whole length against RLIMIT_MEMLOCK before
        # mlock_fixup() skips hugetlb VMAs: a huge-page model still needs the limit
        log.note(f"mlock with a {lim} memlock ulimit: llama.cpp's mlock of a larger model "
                 "fails (ENOMEM) even on hugetlbfs; use 'unlimited' or ipc_lock")
    return memlock_bytes


def _unassigned(facts: HostFacts, workers: list[WorkerPlan], sys_cpus: tuple[int, ...],
                idle: set[int], excl: _Exclusion, log: _Log) -> list[int]:
    assigned = {x for w in workers for x in w.cpus}
    unassigned = sorted({c.id for c in facts.cpus} - assigned - set(sys_cpus) - idle
                        - excl.cpus)
    if unassigned and not log.refusals:
        log.note(f"CPUs {format_cpulist(unassigned)} are in no cpuset: a bigger share would "
                 "split an L3 domain or a core between workers; the OS may use them")
    return unassigned
