"""The placement planner on the fake topologies (9950X, 2-socket EPYC, this VM) and on generated
ones (hypothesis): whole cores, one L3 domain per worker when it fits, reserved CPUs untouched."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hosttune.containers.cpusets import check_cpusets, core_of, cpusets_from_compose
from hosttune.containers.planner import ContainerPlan, plan_from_profile, plan_workload
from hosttune.errors import HosttuneError, ProfileError
from hosttune.host import Host
from hosttune.host.facts import Cpu, HostFacts, NumaNode
from hosttune.host.parsers import format_cpulist
from hosttune.host.pci import parse_pci_gpu, read_gpus
from hosttune.profile import load_profile
from hosttune.profile.schema import Profile, WorkloadSection
from hosttune.profile.sizes import format_size
from hosttune.tunables.base import Context
from hosttune.tunables.hugepages import resolve
from tests.containers_trees import SEED_COMPOSE, add_nvidia_gpu, add_pci_device

GiB = 1024**3


def wl(**kw) -> WorkloadSection:
    kw.setdefault("store", "/srv/models")
    return msgspec.convert(kw, WorkloadSection, strict=False)


def cpus_of(plan: ContainerPlan) -> list[str]:
    return [format_cpulist(w.cpus) for w in plan.workers]


# --- the seed's box ---------------------------------------------------------------------------


def test_seed_profile_on_9950x(ryzen: Path) -> None:
    add_nvidia_gpu(ryzen, local_cpus=list(range(32)))
    plan = plan_from_profile(load_profile("ryzen9950x-rtx5090").profile, Host(ryzen).facts)
    assert plan.ok, plan.refusals
    assert cpus_of(plan) == ["0-3,16-19", "4-7,20-23", "8-11,24-27", "14-15,30-31"]
    assert [w.container for w in plan.workers] == [
        "llama-cpu-0", "llama-cpu-1", "llama-cpu-2", "llama-gpu-0"]
    assert format_cpulist(plan.system_cpus) == "12-13,28-29"
    cpu0 = plan.workers[0]
    assert (cpu0.threads, cpu0.threads_batch, cpu0.mems, cpu0.l3_domains) == (4, 8, (0,), (0,))
    assert plan.workers[3].gpus == (0,) and plan.workers[3].gpu_addresses == ("0000:01:00.0",)
    assert any("5 core(s) inside one L3 domain: only 2" in n for n in plan.notes)
    assert any("smt keep-together: siblings 16-19" in y for y in cpu0.why)
    assert plan.unassigned_cpus == () and plan.idle_cpus == ()
    # no finding on the planned cpusets
    assert check_cpusets(Host(ryzen).facts, {w.name: w.cpus for w in plan.workers},
                         reserved=plan.system_cpus) == []


def test_seed_pinning_is_flagged(ryzen: Path) -> None:
    facts = Host(ryzen).facts
    sets = cpusets_from_compose(SEED_COMPOSE)
    assert "unpinned" not in sets
    f = check_cpusets(facts, sets)
    sib = [x for x in f if x.kind == "sibling-sharing"]
    assert {x.names for x in sib} == {("llama-cpu-0", "llama-cpu-2"),
                                      ("llama-cpu-1", "gpu-feeder")}
    assert all(x.severity == "error" for x in sib)
    assert "0/16, 1/17" in sib[0].message
    assert not [x for x in f if x.kind == "overlap"]  # by CPU number nothing overlaps
    assert not [x for x in f if x.kind == "spans-l3"]


def test_a_cpuset_that_does_not_parse_is_refused_and_the_others_checked(ryzen: Path) -> None:
    plan = plan_workload(Host(ryzen).facts, wl(cpu_workers={
        "count": 2, "cpusets": ["bogus", "0-3,16-19"], "memory": "4GiB"}))
    assert not plan.ok
    assert any(r.startswith("cpu_workers.cpusets[0] 'bogus':") for r in plan.refusals), \
        plan.refusals
    assert [format_cpulist(w.cpus) for w in plan.workers if w.kind == "cpu"] == ["0-3,16-19"]


def test_hand_made_cpusets_without_a_count_are_one_worker_each(ryzen: Path) -> None:
    plan = plan_workload(Host(ryzen).facts, wl(cpu_workers={
        "cpusets": ["0-3,16-19", "4-7,20-23"], "memory": "4GiB"}))
    assert plan.ok, plan.refusals
    assert cpus_of(plan) == ["0-3,16-19", "4-7,20-23"]
    # a count that disagrees is still refused
    plan = plan_workload(Host(ryzen).facts, wl(cpu_workers={
        "count": 3, "cpusets": ["0-3,16-19", "4-7,20-23"], "memory": "4GiB"}))
    assert "cpu_workers.cpusets lists 2 cpuset(s) for 3 worker(s)" in plan.refusals


def test_seed_pinning_in_a_profile_is_refused(ryzen: Path) -> None:
    plan = plan_workload(Host(ryzen).facts, wl(
        cpu_workers={"cpusets": ["0-7", "8-15", "16-23"], "count": 3, "memory": "6GiB"},
        system_cores=0, reserved_cpus="24-31"))
    assert not plan.ok
    text = " | ".join(plan.refusals)
    assert "hosttune-cpu-0 (0-7) and hosttune-cpu-2 (16-23) share 8 physical core(s)" in text
    assert "hosttune-cpu-1 shares physical core(s) 8/24" in text


def test_leave_idle_keeps_siblings_out_of_every_cpuset(ryzen: Path) -> None:
    plan = plan_workload(Host(ryzen).facts, wl(cpu_workers={"count": 3, "memory": "4GiB"},
                                               system_cores=4, smt="leave-idle"))
    assert plan.ok, plan.refusals
    assert cpus_of(plan) == ["0-3", "4-7", "8-11"]
    assert format_cpulist(plan.idle_cpus) == "16-27"
    assert format_cpulist(plan.system_cpus) == "12-15,28-31"
    assert all((w.threads, w.threads_batch) == (4, 4) for w in plan.workers)


def test_two_workers_split_the_reserve_between_ccds(ryzen: Path) -> None:
    # 2 x 7 cores (one per CCD) beats 2 x 4 in one CCD: the reserve takes one core from each
    plan = plan_workload(Host(ryzen).facts, wl(cpu_workers={"count": 2, "memory": "4GiB"},
                                               system_cores=2))
    assert plan.ok
    assert cpus_of(plan) == ["0-6,16-22", "8-14,24-30"]
    assert format_cpulist(plan.system_cpus) == "7,15,23,31"


def test_explicit_core_count_must_align(ryzen: Path) -> None:
    facts = Host(ryzen).facts
    bad = plan_workload(facts, wl(cpu_workers={"count": 1, "cores": 12, "memory": "4GiB"}))
    assert not bad.ok
    assert "a multiple of 8" in bad.refusals[0]
    two = plan_workload(facts, wl(cpu_workers={"count": 2, "cores": 3, "memory": "4GiB"},
                                  system_cores=1))
    assert two.ok and cpus_of(two) == ["0-2,16-18", "8-10,24-26"]


def test_isolated_and_reserved_cpus_stay_out(ryzen: Path) -> None:
    (ryzen / "sys/devices/system/cpu/isolated").write_text("2-3\n")
    plan = plan_workload(Host(ryzen).facts, wl(cpu_workers={"count": 2, "memory": "4GiB"},
                                               system_cores=1, reserved_cpus="25"))
    assert plan.ok, plan.refusals
    used = {c for w in plan.workers for c in w.cpus}
    assert not used & {2, 3, 18, 19, 9, 25}  # whole cores of isolated 2-3 and reserved 25
    assert format_cpulist(plan.excluded_cpus) == "2-3,9,18-19,25"
    assert any("isolated" in n for n in plan.notes)


# --- two sockets ------------------------------------------------------------------------------


def test_epyc_workers_spread_over_nodes_on_whole_ccxs(epyc: Path) -> None:
    plan = plan_workload(Host(epyc).facts, wl(cpu_workers={"count": 3, "memory": "8GiB"},
                                              system_cores=4))
    assert plan.ok, plan.refusals
    assert cpus_of(plan) == ["0-15,64-79", "16-31,80-95", "32-47,96-111"]
    assert [w.mems for w in plan.workers] == [(0,), (0,), (1,)]
    assert plan.workers[0].l3_domains == (0, 1, 2, 3)
    assert any("4 whole L3 domains (16 cores)" in n for n in plan.notes)


def test_epyc_gpu_feed_cores_on_the_gpu_node(epyc: Path) -> None:
    node1 = [c for c in range(128) if (c % 64) >= 32]
    add_nvidia_gpu(epyc, "0000:c1:00.0", numa_node=1, local_cpus=node1, pci_class="0x030200")
    plan = plan_workload(Host(epyc).facts, wl(
        cpu_workers={"count": 2, "memory": "8GiB"}, gpu_workers={"count": 1, "feed_cores": 2},
        system_cores=1))
    assert plan.ok, plan.refusals
    gpu = plan.worker("gpu-0")
    assert gpu.mems == (1,) and set(gpu.cpus) <= set(node1)
    assert gpu.threads == 2 and gpu.gpu_addresses == ("0000:c1:00.0",)


def test_a_missing_gpu_leaves_the_next_workers_feed_cores_in_place(epyc: Path) -> None:
    node1 = [c for c in range(128) if (c % 64) >= 32]
    add_nvidia_gpu(epyc, "0000:c1:00.0", numa_node=1, local_cpus=node1, pci_class="0x030200")
    # hand-made cpusets: the workers are made (and checked) even after a refusal
    plan = plan_workload(Host(epyc).facts, wl(
        cpu_workers={"count": 1, "cpusets": ["0-3,64-67"], "memory": "8GiB"},
        gpu_workers={"count": 2, "gpus": [7, 0], "feed_cores": 2}, system_cores=1))
    assert any(r.startswith("gpu-0: GPU 7 does not exist") for r in plan.refusals), \
        plan.refusals
    # gpu-1 (GPU 0) keeps its name and the feed cores reserved for it, on the GPU's node
    (gpu,) = [w for w in plan.workers if w.kind == "gpu"]
    assert gpu.name == "gpu-1" and gpu.gpus == (0,)
    assert len(gpu.cpus) == 4 and set(gpu.cpus) <= set(node1) and gpu.mems == (1,)


def test_memory_that_does_not_fit_is_refused(epyc: Path) -> None:
    plan = plan_workload(Host(epyc).facts, wl(cpu_workers={"count": 2, "memory": "300GiB"}),
                         hugepage_bytes=0)
    assert not plan.ok
    assert any("NUMA node" in r and "300 GiB" in r for r in plan.refusals)
    plan = plan_workload(Host(epyc).facts, wl(cpu_workers={"count": 2, "memory": "100GiB"}),
                         hugepage_bytes=400 * GiB)
    assert any("huge-page pool 400 GiB" in r for r in plan.refusals)


POOL_BY_NODE = """name: pool-by-node
hugepages:
  pools:
    - {pagesize: 2M, size: auto, nodes: {0: 2GiB, 1: 100}}
workload:
  store: /srv/models
  cpu_workers: {count: 2, memory: 255GiB}
  system_cores: 4
"""


def test_planner_keeps_out_the_pool_the_hugepages_family_allocates(epyc: Path,
                                                                    tmp_path: Path) -> None:
    # size: auto with per-node sizes is their sum (1024 + 100 pages of 2 MiB): the planner
    # must take that same pool out of the workers' room, not 0
    path = tmp_path / "p.yaml"
    path.write_text(POOL_BY_NODE)
    loaded = load_profile(str(path))
    pool = resolve(Context(Host(epyc), loaded)).pools["2M"]
    assert pool.bytes == 2_357_198_848
    plan = plan_from_profile(loaded.profile, Host(epyc).facts)
    assert not plan.ok  # 2 x 255 GiB fit 512 GiB of RAM, but not beside the pool
    assert any(f"huge-page pool {format_size(pool.bytes)}" in r for r in plan.refusals), \
        plan.refusals


# --- this VM ----------------------------------------------------------------------------------


def test_vm_refuses_what_cannot_fit(vm: Path) -> None:
    facts = Host(vm).facts
    n = len(facts.physical_cores)
    plan = plan_workload(facts, wl(cpu_workers={"count": n + 1, "memory": "16MiB"},
                                   system_cores=1))
    assert not plan.ok and plan.workers == ()
    assert f"this host has {n} usable physical core(s)" in plan.refusals[0]
    ok = plan_workload(facts, wl(cpu_workers={"count": n, "memory": "16MiB"}, system_cores=0))
    assert ok.ok and sorted(c for w in ok.workers for c in w.cpus) == facts.cpu_ids


def test_gpu_worker_without_gpu_is_refused(vm: Path) -> None:
    plan = plan_workload(Host(vm).facts, wl(gpu_workers={"count": 1}, system_cores=0))
    assert any("no NVIDIA GPU" in r for r in plan.refusals)


def test_models_one_per_worker_or_shared(ryzen: Path) -> None:
    facts = Host(ryzen).facts
    shared = plan_workload(facts, wl(cpu_workers={"count": 2, "memory": "1GiB",
                                                  "models": ["m.gguf"]}))
    assert [w.model_path for w in shared.workers] == ["/models/m.gguf"] * 2
    bad = plan_workload(facts, wl(cpu_workers={"count": 3, "memory": "1GiB",
                                               "models": ["a.gguf", "b.gguf"]}))
    assert any("2 model(s) for 3 worker(s)" in r for r in bad.refusals)
    out = plan_workload(facts, wl(cpu_workers={"count": 1, "memory": "1GiB",
                                               "models": ["/etc/shadow"]}))
    assert any("not inside the store" in r for r in out.refusals)
    up = plan_workload(facts, wl(cpu_workers={"count": 1, "memory": "1GiB",
                                              "models": ["../x.gguf"]}))
    assert any("'..' leaves the store" in r for r in up.refusals)


def test_count_auto_is_one_worker_per_ccd(ryzen: Path, epyc: Path) -> None:
    r = plan_workload(Host(ryzen).facts, wl(cpu_workers={"count": "auto", "memory": "1GiB"},
                                            system_cores=1))
    assert r.ok and len(r.workers) == 2
    e = plan_workload(Host(epyc).facts, wl(cpu_workers={"count": "auto", "memory": "1GiB"},
                                           system_cores=1))
    # 15 whole CCXs of 4 cores beat 16 workers of 3
    assert e.ok and len(e.workers) == 15 and all(w.threads == 4 for w in e.workers)


def test_profile_without_workload(ryzen: Path) -> None:
    with pytest.raises(ProfileError, match="no 'workload' section"):
        plan_from_profile(load_profile("inference").profile, Host(ryzen).facts)


def test_store_defaults_to_the_first_hugetlbfs_mount(vm: Path) -> None:
    p = msgspec.convert({
        "name": "x", "hugetlbfs": {"mounts": [{"path": "/mnt/hp", "size": "64MiB"}]},
        "workload": {"cpu_workers": {"count": 1, "memory": "16MiB", "models": ["a.gguf"]},
                     "system_cores": 0}}, Profile, strict=False)
    plan = plan_from_profile(p, Host(vm).facts)
    assert plan.ok and plan.store == "/mnt/hp"


def test_compose_file_errors() -> None:
    with pytest.raises(HosttuneError, match="no 'services'"):
        cpusets_from_compose("a: 1\n")
    with pytest.raises(HosttuneError, match="services.x.cpuset"):
        cpusets_from_compose("services:\n  x: {cpuset: 'a-b'}\n")


# --- PCI facts ----------------------------------------------------------------------------------


def test_pci_gpu_parsing(ryzen: Path) -> None:
    assert parse_pci_gpu("0000:01:00.0", "0x10de", "0x030000", "0x2b85", "-1", "0-31") \
        is not None
    assert parse_pci_gpu("0000:01:00.0", "0x10de", "0x030200", "0x2330", "1", "32-63") \
        .numa_node == 1  # type: ignore[union-attr]
    assert parse_pci_gpu("0000:01:00.1", "0x10de", "0x040300", "0x22e8", "-1", "") is None
    assert parse_pci_gpu("0000:00:02.0", "0x1af4", "0x030000", "0x1050", "-1", "") is None
    add_nvidia_gpu(ryzen, "0000:02:00.0")
    add_nvidia_gpu(ryzen, "0000:01:00.0")
    add_pci_device(ryzen, "0000:01:00.1", "0x10de", "0x040300")  # the GPU's HDMI audio
    gpus = read_gpus(Host(ryzen))
    assert [g.address for g in gpus] == ["0000:01:00.0", "0000:02:00.0"]
    assert Host(ryzen).facts.gpus == gpus


# --- properties on generated topologies -------------------------------------------------------


def synth_facts(packages: int, l3_per_pkg: int, cores_per_l3: int, smt: bool,
                adjacent: bool) -> HostFacts:
    """AMD numbering (siblings N and N+cores) or Intel-like adjacent siblings (2N, 2N+1); one
    NUMA node per package."""
    ncores = packages * l3_per_pkg * cores_per_l3
    threads: dict[int, tuple[int, ...]] = {}
    for core in range(ncores):
        if not smt:
            threads[core] = (core,)
        elif adjacent:
            threads[core] = (2 * core, 2 * core + 1)
        else:
            threads[core] = (core, core + ncores)
    l3_sets = []
    for d in range(packages * l3_per_pkg):
        l3_sets.append(tuple(sorted(t for c in range(d * cores_per_l3, (d + 1) * cores_per_l3)
                                    for t in threads[c])))
    l3_domains = tuple(sorted(l3_sets, key=lambda t: t[0]))
    cpus = []
    for core, ts in threads.items():
        d = core // cores_per_l3
        pkg = d // l3_per_pkg
        for t in ts:
            cpus.append(Cpu(t, pkg, core % (l3_per_pkg * cores_per_l3), pkg,
                            l3_domains.index(l3_sets[d]), ts))
    cpus.sort(key=lambda c: c.id)
    nodes = tuple(NumaNode(p, tuple(c.id for c in cpus if c.node == p), 64 * GiB)
                  for p in range(packages))
    return HostFacts(mem_total_bytes=64 * GiB * packages, cpus=tuple(cpus), nodes=nodes,
                     l3_domains=l3_domains, hugepage_sizes=(2 * 1024**2,),
                     default_hugepage_bytes=2 * 1024**2)


@st.composite
def scenarios(draw):
    facts = draw(st.sampled_from([
        synth_facts(1, 2, 8, True, False),  # 9950X
        synth_facts(2, 8, 4, True, False),  # 2-socket EPYC
        synth_facts(1, 1, 2, False, False),  # this VM
    ]) | st.builds(synth_facts, st.integers(1, 2), st.integers(1, 4), st.integers(1, 8),
                   st.booleans(), st.booleans()))
    ids = [c.id for c in facts.cpus]
    reserved = draw(st.lists(st.sampled_from(ids), max_size=3, unique=True))
    cores = draw(st.sampled_from(["auto", "auto", 1, 2, 3, 4, 8]))
    w = {
        "cpu_workers": {"count": draw(st.integers(1, 6)), "cores": cores, "memory": "64MiB"},
        "system_cores": draw(st.integers(0, 3)),
        "reserved_cpus": format_cpulist(reserved),
        "smt": draw(st.sampled_from(["keep-together", "leave-idle"])),
    }
    return facts, w, set(reserved)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_placement_properties(case) -> None:
    facts, w, reserved = case
    plan = plan_workload(facts, wl(**w))
    cmap = core_of(facts)
    by_id = {c.id: c for c in facts.cpus}
    excluded_cores = {cmap[c] for c in reserved}
    usable = [c for c in facts.physical_cores if c not in excluded_cores]
    n = w["cpu_workers"]["count"]
    if w["cpu_workers"]["cores"] == "auto" and n + w["system_cores"] <= len(usable):
        # it fits with one core each: the planner must not refuse
        assert plan.ok, plan.refusals
    if not plan.ok:
        assert plan.refusals
        return
    assert len(plan.workers) == n
    worker_cores = [{cmap[c] for c in x.cpus} for x in plan.workers]
    # no two workers share a physical core, nor with the system CPUs
    system_cores = {cmap[c] for c in plan.system_cpus}
    for i, a in enumerate(worker_cores):
        assert not a & system_cores
        for b in worker_cores[i + 1:]:
            assert not a & b
    size = max(len(d) for d in facts.l3_domains) // max(len(c) for c in facts.physical_cores)
    for x, cores in zip(plan.workers, worker_cores):
        cpus = set(x.cpus)
        # reserved CPUs (and their whole cores) are never assigned
        assert not cpus & reserved and not cores & excluded_cores
        assert not cpus & set(plan.system_cpus)
        # whole cores; the SMT policy decides about siblings
        assert set(x.cores) == cores
        for core in cores:
            if w["smt"] == "keep-together":
                assert set(core) <= cpus
            else:
                assert core[0] in cpus and not set(core[1:]) & cpus
                assert set(core[1:]) <= set(plan.idle_cpus)
        assert x.threads == len(cores) and x.threads_batch == len(cpus)
        # one NUMA node, and cpuset.mems is that node
        nodes = {by_id[c].node for c in cpus}
        assert len(nodes) == 1 and x.mems == tuple(nodes)
        l3s = {by_id[c].l3 for c in cpus}
        # free cores per domain once reserved CPUs and the system cores are taken out: reserved
        # CPUs can fragment the domains so that no single one holds the worker any more
        free = max(len({cmap[c] for c in d} - excluded_cores - system_cores)
                   for d in facts.l3_domains)
        if len(cores) <= size and (not excluded_cores or (n == 1 and len(cores) <= free)):
            assert len(l3s) == 1  # fits one L3 domain: stays in it
        elif len(cores) > size:
            # bigger than a domain: whole domains (less reserved cores), shared with no one
            for d in l3s:
                dom_cores = {cmap[c] for c in facts.l3_domains[d]}
                assert dom_cores - excluded_cores - system_cores <= cores
    # idle siblings are in no cpuset
    assert not set(plan.idle_cpus) & {c for x in plan.workers for c in x.cpus}
    # the system CPUs are whole cores too
    assert {c for core in system_cores for c in core} == set(plan.system_cpus)


def test_host_without_l3_information_plans_per_node() -> None:
    base = synth_facts(2, 1, 4, True, False)
    facts = msgspec.structs.replace(base, cpus=tuple(
        Cpu(c.id, c.package, c.core, c.node, -1, c.siblings) for c in base.cpus),
        l3_domains=())
    plan = plan_workload(facts, wl(cpu_workers={"count": 2, "memory": "64MiB"},
                                   system_cores=1))
    assert plan.ok, plan.refusals
    assert [w.mems for w in plan.workers] == [(0,), (1,)]
    assert all(w.l3_domains == () for w in plan.workers)


def test_small_memlock_ulimit_with_mlock_is_explained(vm: Path) -> None:
    plan = plan_workload(Host(vm).facts, wl(cpu_workers={"count": 1, "memory": "16MiB"},
                                            system_cores=0, memlock_limit="4MiB"))
    assert any("mlock of a larger model fails" in n for n in plan.notes)
    plan = plan_workload(Host(vm).facts, wl(cpu_workers={"count": 1, "memory": "16MiB"},
                                            system_cores=0, memlock="ipc_lock"))
    assert not any("mlock of a larger model fails" in n for n in plan.notes)


def test_ryzen_profile_gpu_irqs_on_system_cores(tmp_path) -> None:
    """The built-in 9950X profile pins GPU IRQs to CPUs that no llama.cpp worker owns (the seed's
    f0000000 mask put them inside a container's cores)."""
    from hosttune.host import Host
    from hosttune.host.facts import read_facts
    from hosttune.host.parsers import parse_cpulist as cpulist
    from hosttune.profile import load_profile
    from tests.containers_trees import add_nvidia_gpu
    from tests.fakehost import ryzen_9950x

    ryzen_9950x(tmp_path)
    add_nvidia_gpu(tmp_path)
    prof = load_profile("ryzen9950x-rtx5090").profile
    assert prof.workload is not None and prof.gpu_irq is not None
    plan = plan_workload(read_facts(Host(tmp_path)), prof.workload)
    assert plan.ok, plan.refusals
    irq = set(cpulist(prof.gpu_irq.cpus))
    assert irq <= set(plan.system_cpus)
    assert not irq & {c for x in plan.workers for c in x.cpus}
