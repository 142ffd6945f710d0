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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hosttune.containers.cpusets import CpusetFinding, check_cpusets, core_of
from hosttune.host.facts import HostFacts
from hosttune.host.parsers import format_cpulist, parse_cpulist
from hosttune.profile.sizes import format_size, parse_size
from hosttune.tunables.hugepages import pool_bytes

if TYPE_CHECKING:
    from hosttune.profile.schema import Profile, WorkloadSection

Core = tuple[int, ...]
SHIM_TARGET_DIR = "/opt/hosttune/lib"


@dataclass(frozen=True)
class WorkerPlan:
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


@dataclass(frozen=True)
class ContainerPlan:
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


@dataclass
class _Domain:
    index: int  # L3 domain index (or -1 - node when the host does not expose L3)
    node: int
    cores: list[Core]  # available cores, ascending
    full: int  # cores before reservations (available ones only)


def _domains(facts: HostFacts, excluded: set[int]) -> list[_Domain]:
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


@dataclass(frozen=True)
class _Shape:
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


@dataclass(frozen=True)
class _Reservation:
    name: str  # 'system', 'gpu-0'
    cores: int
    nodes: frozenset[int] | None  # allowed NUMA nodes (None: any)


def _place_reservations(doms: list[_Domain], reservations: list[_Reservation], shape: _Shape
                        ) -> tuple[dict[int, int], dict[str, dict[int, int]]] | None:
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
            ) -> tuple[_Shape | None, tuple[dict[int, int], dict[str, dict[int, int]]] | None,
                       list[str]]:
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
    notes: list[str] = []
    refusals: list[str] = []
    by_id = {c.id: c for c in facts.cpus}
    cmap = core_of(facts)
    store = store if store is not None else wl.store

    # -- CPUs never assigned: whole cores of reserved_cpus and isolcpus ---------------------
    try:
        reserved = set(parse_cpulist(wl.reserved_cpus))
    except ValueError as err:
        reserved = set()
        refusals.append(f"workload.reserved_cpus {wl.reserved_cpus!r}: {err}")
    unknown = sorted(reserved - set(by_id))
    if unknown:
        notes.append(f"reserved_cpus {format_cpulist(unknown)} do not exist on this host")
    isolated = set(facts.isolated_cpus)
    if isolated:
        notes.append(f"CPUs {format_cpulist(sorted(isolated))} are isolated (isolcpus): the "
                     "scheduler does not balance threads across them, so no worker is placed "
                     "there")
    excluded_cores = [c for c in facts.physical_cores if set(c) & (reserved | isolated)]
    excluded = {x for c in excluded_cores for x in c}
    if excluded_cores and reserved:
        notes.append(f"reserved CPUs {format_cpulist(sorted(reserved & set(by_id)))}: their "
                     f"whole physical cores ({format_cpulist(sorted(excluded))}) stay out of "
                     "every worker")

    doms = _domains(facts, excluded)
    smt = facts.smt
    if not smt:
        notes.append("no SMT on this host: one CPU per core, the smt policy changes nothing")

    # -- GPU workers and their feed cores ---------------------------------------------------
    gpu_spec = wl.gpu_workers
    reservations: list[_Reservation] = []
    gpu_of: list[int] = []
    if gpu_spec.count:
        if not facts.gpus:
            refusals.append(f"{gpu_spec.count} GPU worker(s) asked for, but no NVIDIA GPU was "
                            "found in /sys/bus/pci/devices (vendor 0x10de, class 0x03xxxx)")
        else:
            wanted = (list(range(gpu_spec.count)) if gpu_spec.gpus == "auto"
                      else list(gpu_spec.gpus))
            if len(wanted) != gpu_spec.count:
                refusals.append(f"gpu_workers.gpus lists {len(wanted)} GPU(s) for "
                                f"{gpu_spec.count} worker(s)")
            for i, g in enumerate(wanted[:gpu_spec.count]):
                if not 0 <= g < len(facts.gpus):
                    refusals.append(f"gpu-{i}: GPU {g} does not exist (found "
                                    f"{len(facts.gpus)}: "
                                    f"{', '.join(x.address for x in facts.gpus)})")
                    continue
                gpu_of.append(g)
                node = facts.gpus[g].numa_node
                nodes = frozenset({node}) if node >= 0 and any(
                    d.node == node for d in doms) else None
                reservations.append(_Reservation(f"gpu-{i}", gpu_spec.feed_cores, nodes))
    if wl.system_cores:
        reservations.append(_Reservation("system", wl.system_cores, None))
    else:
        notes.append("system_cores: 0 - the OS, dockerd and IRQs share the workers' cores")

    # -- how many CPU workers ----------------------------------------------------------------
    cpu_spec = wl.cpu_workers
    probe: tuple[dict[int, int], dict[str, dict[int, int]]] | None = None
    total_cores = sum(d.full for d in doms)
    reserved_cores = sum(r.cores for r in reservations)
    if cpu_spec.cpusets is not None:
        n_cpu = len(cpu_spec.cpusets)
        if cpu_spec.count not in ("auto", n_cpu):
            refusals.append(f"cpu_workers.cpusets lists {n_cpu} cpuset(s) for {cpu_spec.count} "
                            "worker(s)")
    elif cpu_spec.count == "auto":
        probe = _place_reservations(doms, reservations, _Shape("in-domain", 1, 1))
        n_cpu = sum(1 for i in range(len(doms)) if probe and probe[0][i] > 0)
    else:
        assert isinstance(cpu_spec.count, int)
        n_cpu = cpu_spec.count
    if n_cpu == 0 and gpu_spec.count == 0:
        refusals.append("the workload asks for no workers (cpu_workers.count and "
                        "gpu_workers.count are 0)")

    if reserved_cores + n_cpu > total_cores and cpu_spec.cpusets is None:
        refusals.append(
            f"{n_cpu} CPU worker(s) need at least {n_cpu} whole core(s) and the reserve "
            f"{reserved_cores} ({', '.join(f'{r.name}: {r.cores}' for r in reservations)}), "
            f"but this host has {total_cores} usable physical core(s)")

    # -- shape search ------------------------------------------------------------------------
    shape: _Shape | None = None
    placed: tuple[dict[int, int], dict[str, dict[int, int]]] | None = None
    rejected: list[str] = []
    if not refusals and cpu_spec.cpusets is None:
        shapes = _shapes(doms, cpu_spec.cores)
        if not shapes and cpu_spec.cores != "auto":
            sizes = sorted({d.full for d in doms})
            refusals.append(
                f"cpu_workers.cores {cpu_spec.cores}: L3 domains here hold {sizes} core(s); a "
                f"worker gets at most one domain's cores or whole domains of one NUMA node (use "
                f"<= {max(sizes)} or a multiple of {min(sizes)})")
        if cpu_spec.count == "auto" and n_cpu:
            # one worker per L3 domain: per domain with free cores, or per domain the reserve
            # left whole - whichever puts more cores to work
            whole = sum(1 for i, d in enumerate(doms) if probe and probe[0][i] == d.full)
            best_total = -1
            for n in sorted({n_cpu, whole} - {0}, reverse=True):
                cand = _search(doms, reservations, shapes, n)
                if cand[0] is not None and n * cand[0].cores > best_total:
                    best_total = n * cand[0].cores
                    n_cpu, (shape, placed, rejected) = n, cand
            notes.append(f"cpu_workers.count auto: one worker per L3 domain -> {n_cpu}")
        else:
            shape, placed, rejected = _search(doms, reservations, shapes, n_cpu)
        if shape is None and shapes:
            why = rejected[-1] if rejected else "no shape fits"
            refusals.append(f"{n_cpu} CPU worker(s) do not fit without splitting a core, an L3 "
                            f"domain or a NUMA node ({why})")

    # -- materialise cores -------------------------------------------------------------------
    system_cores: list[Core] = []
    gpu_cores: dict[str, list[Core]] = {}
    cpu_blocks: list[tuple[list[Core], int]] = []  # (cores, node)
    if cpu_spec.cpusets is None and shape is not None and placed is not None:
        avail, taken = placed
        heads: dict[int, list[Core]] = {}
        for i, d in enumerate(doms):
            tail = list(reversed(d.cores))
            for r in reservations:
                n = taken.get(r.name, {}).get(i, 0)
                got, tail = tail[:n], tail[n:]
                (system_cores if r.name == "system" else
                 gpu_cores.setdefault(r.name, [])).extend(sorted(got))
            heads[i] = sorted(tail)
        per_node: dict[int, list[list[Core]]] = defaultdict(list)
        if shape.kind == "in-domain":
            # round-robin over the node's L3 domains: with fewer workers than slots, each gets
            # a CCD of its own (its own L3 and its own link to the memory controllers)
            slots: dict[int, list[list[Core]]] = {}
            for i in range(len(doms)):
                h = heads[i]
                slots[i] = [h[b * shape.size:(b + 1) * shape.size]
                            for b in range(len(h) // shape.size)]
            depth = max((len(v) for v in slots.values()), default=0)
            for b in range(depth):
                for i, d in enumerate(doms):
                    if b < len(slots[i]):
                        per_node[d.node].append(slots[i][b])
        else:
            for node in sorted({d.node for d in doms}):
                full = [i for i, d in enumerate(doms) if d.node == node and avail[i] == d.full
                        and d.full > 0]
                for b in range(len(full) // shape.size):
                    group = full[b * shape.size:(b + 1) * shape.size]
                    per_node[node].append(sorted(c for i in group for c in heads[i]))
        # round-robin over NUMA nodes: workers spread over the memory controllers
        rr: list[tuple[list[Core], int]] = []
        queues = {n: list(b) for n, b in sorted(per_node.items())}
        while any(queues.values()):
            for n in sorted(queues):
                if queues[n]:
                    rr.append((queues[n].pop(0), n))
        cpu_blocks = sorted(rr[:n_cpu], key=lambda b: b[0][0][0])
        if n_cpu:
            msg = f"{n_cpu} CPU worker(s) x {shape.describe()}"
            if rejected:
                msg += f"; larger workers do not fit: {rejected[-1]}"
            notes.append(msg)
    elif cpu_spec.cpusets is not None:
        for i, text in enumerate(cpu_spec.cpusets):
            try:
                cpus = parse_cpulist(text)
            except ValueError as err:
                refusals.append(f"cpu_workers.cpusets[{i}] {text!r}: {err}")
                continue
            cores_used = sorted({cmap.get(c, (c,)) for c in cpus})
            node = by_id[cpus[0]].node if cpus and cpus[0] in by_id else 0
            cpu_blocks.append(([tuple(c) for c in cores_used], node))
        notes.append("cpu_workers.cpusets given by hand: checked, not planned")
        # the reserve still comes from the cores nobody asked for, at the end
        used = {x for b, _ in cpu_blocks for c in b for x in c}
        free = [c for d in reversed(doms) for c in reversed(d.cores) if not set(c) & used]
        for r in reservations:
            got, free = free[:r.cores], free[r.cores:]
            (system_cores if r.name == "system" else
             gpu_cores.setdefault(r.name, [])).extend(sorted(got))
            if len(got) < r.cores:
                refusals.append(f"{r.name}: {r.cores} core(s) to reserve, {len(got)} left "
                                "outside the hand-made cpusets")

    # -- models, shim, memory ------------------------------------------------------------------
    def models_for(group: str, models: list[str], n: int) -> list[str | None]:
        if not models:
            if n:
                notes.append(f"{group}: no model configured - MODEL_PATH is left out")
            return [None] * n
        if len(models) == 1:
            if n > 1:
                notes.append(f"{group}: all {n} workers map the same model file: one copy in "
                             "huge pages, shared MAP_SHARED")
            return [models[0]] * n
        if len(models) != n:
            refusals.append(f"{group}.models lists {len(models)} model(s) for {n} worker(s) "
                            "(give one per worker, or one for all)")
            return [None] * n
        return list(models)

    cpu_models = models_for("cpu_workers", cpu_spec.models, n_cpu)
    gpu_models = models_for("gpu_workers", gpu_spec.models, gpu_spec.count)
    if (n_cpu or gpu_spec.count) and not store:
        refusals.append("no model store: set workload.store or a hugetlbfs mount in the profile")

    def model_path(model: str | None) -> str | None:
        if model is None:
            return None
        if model.startswith("/"):
            if store and model.startswith(store.rstrip("/") + "/"):
                rel = model[len(store.rstrip("/")) + 1:]
            else:
                refusals.append(f"model {model} is not inside the store {store}")
                return None
        else:
            rel = model
        if ".." in rel.split("/"):
            refusals.append(f"model {model}: '..' leaves the store")
            return None
        return f"{wl.store_target.rstrip('/')}/{rel}"

    def needs_shim(model: str | None) -> bool:
        return bool(model) and any(str(model).endswith(s) for s in wl.shim_for)

    try:
        cpu_mem = parse_size(cpu_spec.memory)
        gpu_mem = parse_size(gpu_spec.memory)
        tmpfs_bytes = parse_size(wl.tmpfs_size)
    except ValueError as err:  # validated by the schema; kept for direct callers
        refusals.append(str(err))
        cpu_mem = gpu_mem = tmpfs_bytes = 0

    # -- workers ----------------------------------------------------------------------------------
    keep = wl.smt == "keep-together"
    workers: list[WorkerPlan] = []
    idle: set[int] = set()
    port = wl.port_base

    def make(name: str, kind: Literal["cpu", "gpu"], cores: list[Core], mem: int,
             model: str | None, gpus: tuple[int, ...], why: list[str], handmade: list[int] | None
             ) -> WorkerPlan:
        nonlocal port
        if handmade is not None:
            cpus = sorted(handmade)
        elif keep:
            cpus = sorted(x for c in cores for x in c)
        else:
            cpus = sorted(c[0] for c in cores)
            idle.update(x for c in cores for x in c[1:])
        mems = sorted({by_id[c].node for c in cpus if c in by_id})
        l3s = sorted({by_id[c].l3 for c in cpus if c in by_id and by_id[c].l3 >= 0})
        threads = len(cores)
        tb = len(cpus)
        if handmade is None:
            doms_txt = ", ".join(f"L3 #{i} ({format_cpulist(facts.l3_domains[i])})"
                                 for i in l3s) or "the only cache domain"
            why.insert(0, f"{len(cores)} whole physical core(s) {format_cpulist(cpus)} in "
                          f"{doms_txt}, NUMA node {format_cpulist(mems)}")
            if smt:
                sib = sorted(x for c in cores for x in c[1:])
                if keep:
                    why.append(f"smt keep-together: siblings {format_cpulist(sib)} are in the "
                               "cpuset, so no other container shares these cores")
                else:
                    why.append(f"smt leave-idle: siblings {format_cpulist(sib)} stay idle (in "
                               "no cpuset): full core resources for one thread each")
        why.append(f"cpuset.mems {format_cpulist(mems)}: memory from the node its cores sit on "
                   "(compose cannot set it: `docker update --cpuset-mems` does)"
                   if len(facts.nodes) > 1 else
                   f"cpuset.mems {format_cpulist(mems)}: the only NUMA node")
        why.append(f"llama.cpp threads {threads} (one per physical core: decode is "
                   f"memory-bound) and threads-batch {tb} (every CPU of the cpuset for prompt "
                   "processing)")
        why.append(f"mem_limit {format_size(mem)}: KV cache and buffers - the model on "
                   "hugetlbfs is charged to the hugetlb cgroup, not to memory.max")
        path = model_path(model)
        shim = needs_shim(model)
        if path:
            why.append(f"MODEL_PATH {path} (read-only bind of the huge-page store)")
        if shim:
            if wl.shim:
                why.append(f"LD_PRELOAD {wl.shim}: {model} has a strict loader that refuses "
                           "a padded hugetlbfs file")
            else:
                refusals.append(f"{name}: {model} has a strict loader (refuses the padded "
                                "hugetlbfs file) and workload.shim is not set")
        elif path:
            why.append("no LD_PRELOAD: llama.cpp's GGUF loader accepts the padded hugetlbfs "
                       "file as it is")
        p = None
        if port is not None:
            p = port
            port += 1
        return WorkerPlan(
            name=name, kind=kind, container=f"{wl.project}-{name}", cpus=tuple(cpus),
            cores=tuple(tuple(c) for c in cores), mems=tuple(mems), l3_domains=tuple(l3s),
            threads=threads, threads_batch=tb, memory_bytes=mem, model=model, model_path=path,
            gpus=gpus, gpu_addresses=tuple(facts.gpus[g].address for g in gpus),
            shim=shim and bool(wl.shim), port=p, why=tuple(why))

    if not refusals or cpu_spec.cpusets is not None:
        for i, (cores, _node) in enumerate(cpu_blocks):
            handmade = None
            if cpu_spec.cpusets is not None:
                handmade = parse_cpulist(cpu_spec.cpusets[i])
            workers.append(make(f"cpu-{i}", "cpu", cores, cpu_mem, cpu_models[i]
                                if i < len(cpu_models) else None, (), [], handmade))
        for i, g in enumerate(gpu_of):
            cores = gpu_cores.get(f"gpu-{i}", [])
            gpu = facts.gpus[g]
            where = (f"NUMA node {gpu.numa_node}" if gpu.numa_node >= 0 else
                     "no NUMA node reported (single-node host)")
            workers.append(make(
                f"gpu-{i}", "gpu", cores, gpu_mem, gpu_models[i] if i < len(gpu_models)
                else None, (g,),
                [f"GPU {g} ({gpu.address}, {where}): its feed cores are this worker's cpuset"],
                None))

    # -- memory fit ---------------------------------------------------------------------------
    if workers:
        total_mem = sum(w.memory_bytes for w in workers)
        room = facts.mem_total_bytes - hugepage_bytes
        if total_mem > room:
            refusals.append(
                f"workers' mem_limit add up to {format_size(total_mem)}, but RAM "
                f"{format_size(facts.mem_total_bytes)} minus the huge-page pool "
                f"{format_size(hugepage_bytes)} leaves {format_size(room)}")
        elif room - total_mem < facts.mem_total_bytes // 10:
            notes.append(f"workers' mem_limit ({format_size(total_mem)}) leave only "
                         f"{format_size(room - total_mem)} for the OS beside the huge-page pool")
        mem_nodes = [n for n in facts.nodes if n.mem_total_bytes > 0]
        if len(mem_nodes) > 1:
            per_node_pool = hugepage_bytes // len(mem_nodes)
            for nd in mem_nodes:
                need = sum(w.memory_bytes for w in workers if nd.id in w.mems)
                if need > nd.mem_total_bytes - per_node_pool:
                    refusals.append(
                        f"NUMA node {nd.id}: workers' mem_limit {format_size(need)} exceed its "
                        f"{format_size(nd.mem_total_bytes)} minus its share of the huge-page "
                        f"pool {format_size(per_node_pool)}")

    # -- hand-made cpusets: flag overlap and sibling sharing ------------------------------------
    findings: list[CpusetFinding] = []
    if cpu_spec.cpusets is not None and workers:
        sys_cpus = {x for c in system_cores for x in c}
        findings = check_cpusets(
            facts, {w.container: w.cpus for w in workers},
            reserved=sorted((reserved & set(by_id)) | isolated | sys_cpus),
            reserved_name="system/reserved")
        for f in findings:
            (refusals if f.severity == "error" else notes).append(f.message)

    memlock_bytes: int | None = None
    if wl.memlock_limit != "unlimited":
        memlock_bytes = parse_size(wl.memlock_limit)
    if wl.memlock == "ipc_lock":
        notes.append("memlock: cap_add IPC_LOCK - workers may mlock regardless of "
                     "RLIMIT_MEMLOCK, so the daemon's own limit does not matter")
    else:
        lim = "unlimited" if memlock_bytes is None else format_size(memlock_bytes)
        notes.append(f"memlock: ulimit {lim} - runc sets it from dockerd, which cannot exceed "
                     "its own hard limit without CAP_SYS_RESOURCE (the memlock section's "
                     "LimitMEMLOCK drop-in)")
        if wl.mlock and memlock_bytes is not None:
            # do_mlock() (mm/mlock.c) checks the whole length against RLIMIT_MEMLOCK before
            # mlock_fixup() skips hugetlb VMAs: a huge-page model still needs the limit
            notes.append(f"mlock with a {lim} memlock ulimit: llama.cpp's mlock of a larger "
                         "model fails (ENOMEM) even on hugetlbfs; use 'unlimited' or ipc_lock")

    assigned = {x for w in workers for x in w.cpus}
    sys_cpus_t = tuple(sorted(x for c in system_cores for x in c))
    unassigned = sorted(set(by_id) - assigned - set(sys_cpus_t) - idle - excluded)
    if unassigned and not refusals:
        notes.append(f"CPUs {format_cpulist(unassigned)} are in no cpuset: a bigger share "
                     "would split an L3 domain or a core between workers; the OS may use them")
    return ContainerPlan(
        profile=profile_name, image=wl.image, project=wl.project, smt=wl.smt,
        memlock_mode=wl.memlock, memlock_bytes=memlock_bytes, mlock=wl.mlock, store=store,
        store_target=wl.store_target, shim=wl.shim, tmpfs_bytes=tmpfs_bytes,
        workers=tuple(workers), system_cpus=sys_cpus_t, excluded_cpus=tuple(sorted(excluded)),
        idle_cpus=tuple(sorted(idle)), unassigned_cpus=tuple(unassigned), notes=tuple(notes),
        refusals=tuple(dict.fromkeys(refusals)), findings=tuple(findings))
