"""Monitor snapshot: every field read from fake trees laid out like real /proc and /sys."""

from __future__ import annotations

import json
from pathlib import Path

import pynvml
import pytest

from hosttune.host import Host
from hosttune.monitor import collect
from hosttune.monitor import gpu as gpu_mod
from hosttune.monitor.gpu import GatewaySource
from hosttune.monitor.parsers import (
    container_id_from_dirname,
    parse_cpuinfo_mhz,
    parse_status_vmlck,
)
from hosttune.monitor.snapshot import (
    AuditSummary,
    ContainersReading,
    CpuReading,
    GpusReading,
    HugePagesReading,
    Monitor,
    StoreReading,
    Unavailable,
    cpuset_findings,
)
from tests import fakehost
from tests.conftest import run_cli
from tests.fake_nvidia import add_nvidia
from tests.monitor_trees import (
    CID_A,
    CID_B,
    CID_C,
    CountingNvml,
    MiB,
    add_cgroup_v1,
    add_cgroup_v2,
    full_ryzen,
    set_hugepages,
    two_gpus,
)


# --- parsers ------------------------------------------------------------------------------------
def test_parse_cpuinfo_mhz_and_vmlck() -> None:
    text = ("processor\t: 0\ncpu MHz\t\t: 2445.408\n\nprocessor\t: 1\nmodel name\t: x\n\n"
            "processor\t: 2\ncpu MHz\t\t: 5752.000\n")
    assert parse_cpuinfo_mhz(text) == {0: 2445.408, 2: 5752.0}
    assert parse_status_vmlck("Name:\tx\nVmLck:\t    2048 kB\n") == 2 * MiB
    assert parse_status_vmlck("Name:\tkthreadd\n") is None
    assert container_id_from_dirname(f"docker-{CID_A}.scope") == CID_A
    assert container_id_from_dirname(CID_B) == CID_B
    assert container_id_from_dirname("docker-xyz.scope") is None


def test_cpuset_findings_rules() -> None:
    online = set(range(8))
    sib = {c: (c % 4, c % 4 + 4) for c in range(8)}
    assert cpuset_findings("a", {0, 4}, online, sib, {"a": {0, 4}}, "0,4") == []
    assert "not pinned" in cpuset_findings("a", set(online), online, sib, {}, None)[0]
    assert "splits SMT" in cpuset_findings("a", {0, 1}, online, sib, {}, None)[0]
    f = cpuset_findings("a", {0, 4}, online, sib, {"a": {0, 4}, "b": {0, 4, 1, 5}}, None)
    assert f == ["overlaps b on 0,4"]
    assert "docker asked 1,5" in cpuset_findings("a", {0, 4}, online, sib, {}, "1,5")[0]


# --- snapshot fields ----------------------------------------------------------------------------
def test_cpu_mhz_and_governor_per_core(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    snap = collect(Host(root), with_audit=False)
    assert isinstance(snap.cpu, CpuReading)
    assert len(snap.cpu.cores) == 32
    for c in snap.cpu.cores:
        assert c.cpuinfo_mhz == pytest.approx(3000.0 + c.cpu * 10.5)
        assert c.cur_freq_hz == (4000000 + c.cpu * 1000) * 1000
        assert c.governor == ("performance" if c.cpu % 2 else "powersave")
        assert c.driver == "amd-pstate-epp"
    assert snap.cpu.governors == {"powersave": 16, "performance": 16}


def test_cpu_without_cpufreq_uses_cpuinfo(vm: Path) -> None:
    snap = collect(Host(vm), with_audit=False)
    assert isinstance(snap.cpu, CpuReading)
    live = parse_cpuinfo_mhz(Path("/proc/cpuinfo").read_text())
    assert {c.cpu for c in snap.cpu.cores} == set(live)


def test_memory_swap_and_memlocked(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    snap = collect(Host(root), with_audit=False)
    assert not isinstance(snap.memory, Unavailable)
    assert snap.memory.total_bytes == 128 * fakehost.GiB
    assert snap.memory.available_bytes == 64 * fakehost.GiB
    assert not isinstance(snap.memlocked, Unavailable)
    assert snap.memlocked.mlocked_bytes == 123 * MiB
    # the ryzen tree has an 8 GiB swap file in /proc/swaps
    ep = collect(Host(fakehost.epyc_2s(tmp_path / "e")), with_audit=False)
    assert not isinstance(ep.memory, Unavailable)
    assert [s.path for s in ep.memory.swaps] == ["/dev/nvme0n1p3"]
    assert ep.memory.swap_total_bytes == 16 * fakehost.GiB


def test_hugepages_per_size_and_node(tmp_path: Path) -> None:
    root = fakehost.epyc_2s(tmp_path / "e")
    set_hugepages(root, 2048, total=300, free=120, resv=7, surp=3,
                  per_node={0: (200, 100, 1), 1: (100, 20, 2)})
    set_hugepages(root, 1048576, total=4, free=4, resv=0, surp=0,
                  per_node={0: (2, 2, 0), 1: (2, 2, 0)})
    snap = collect(Host(root), with_audit=False)
    assert isinstance(snap.hugepages, HugePagesReading)
    got = {(p.page_size_bytes, p.node): (p.total, p.free, p.reserved, p.surplus)
           for p in snap.hugepages.pools}
    assert got == {
        (2 * MiB, None): (300, 120, 7, 3), (2 * MiB, 0): (200, 100, None, 1),
        (2 * MiB, 1): (100, 20, None, 2), (1024 * MiB, None): (4, 4, 0, 0),
        (1024 * MiB, 0): (2, 2, None, 0), (1024 * MiB, 1): (2, 2, None, 0),
    }


def test_model_store_files_and_usage(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    snap = collect(Host(root), with_audit=False)
    assert isinstance(snap.store, StoreReading)
    mounts = {m.mount_point: m for m in snap.store.mounts}
    assert set(mounts) == {"/dev/hugepages", "/srv/hosttune/models"}
    m = mounts["/srv/hosttune/models"]
    assert m.page_size_bytes == 2 * MiB
    assert m.size_limit_bytes == 4 * 1024 * MiB
    assert {f.name: f.size_bytes for f in m.files} == {"llama-q8.gguf": 3 * MiB + 5,
                                                      "sub/tiny.gguf": 2 * MiB}
    # hugetlbfs files take whole huge pages: 3 MiB + 5 B -> 4 MiB, 2 MiB -> 2 MiB
    assert m.used_bytes == 6 * MiB
    assert snap.store.used_bytes == 6 * MiB


def test_store_absent_is_unavailable(tmp_path: Path) -> None:
    root = fakehost.epyc_2s(tmp_path / "e")
    (root / "proc/self/mountinfo").write_text("22 1 253:0 / / rw - ext4 /dev/vda rw\n")
    snap = collect(Host(root), with_audit=False)
    assert snap.store == Unavailable("no hugetlbfs mount")


@pytest.mark.parametrize("version", [1, 2])
def test_containers_cgroup_v1_and_v2(tmp_path: Path, version: int) -> None:
    root = fakehost.ryzen_9950x(tmp_path / "r")
    (add_cgroup_v1 if version == 1 else add_cgroup_v2)(root)
    snap = collect(Host(root), with_audit=False)
    ct = snap.containers
    assert isinstance(ct, ContainersReading)
    assert ct.cgroup_version == version
    assert ct.names_from == "cgroup id"  # --root never asks dockerd
    by_id = {c.id: c for c in ct.containers}
    assert set(by_id) == {CID_A, CID_B, CID_C}
    a, b, c = by_id[CID_A], by_id[CID_B], by_id[CID_C]
    assert a.name == CID_A[:12]
    assert a.vmlck_bytes == 3 * MiB and b.vmlck_bytes == 0 and c.vmlck_bytes == 4096
    assert a.pids == (4001, 4002)
    assert a.cpu_seconds == pytest.approx(5.0) and b.cpu_seconds == pytest.approx(1.5)
    assert a.memory_bytes == 700 * MiB
    assert a.cpuset == tuple([*range(8), *range(16, 24)])
    assert a.cpuset_compliant and a.cpuset_findings == ()
    assert not b.cpuset_compliant and "splits SMT siblings" in b.cpuset_findings[0]
    assert not c.cpuset_compliant and c.cpuset_findings == ("not pinned (all CPUs)",)


def test_containers_without_cgroups(tmp_path: Path) -> None:
    root = fakehost.epyc_2s(tmp_path / "e")
    snap = collect(Host(root), with_audit=False)
    assert snap.containers == Unavailable("no cgroup filesystem mounted")


def test_audit_summary_matches_engine(any_tree: Path) -> None:
    from hosttune import engine
    from hosttune.profile import load_profile

    snap = collect(Host(any_tree), "inference")
    rep = engine.audit(Host(any_tree), load_profile("inference"))
    assert not isinstance(snap.audit, Unavailable)
    assert snap.audit.drift == len(rep.drift) > 0
    assert snap.audit.counts == rep.counts()
    assert [(r.tunable, r.key) for r in snap.audit.rows] == [(r.tunable, r.key) for r in rep.rows]


def test_audit_bad_profile_is_unavailable(vm: Path) -> None:
    snap = collect(Host(vm), "no-such-profile")
    assert isinstance(snap.audit, Unavailable) and "no built-in profile" in snap.audit.reason


def test_a_broken_collector_does_not_stop_the_snapshot(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    (root / "proc/meminfo").unlink()
    (root / "proc/meminfo").mkdir()  # reading it raises IsADirectoryError -> None
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").write_text("garbage\n")
    snap = collect(Host(root), with_audit=False)
    assert snap.memory == Unavailable("/proc/meminfo missing")
    assert isinstance(snap.hugepages, Unavailable) and "ValueError" in snap.hugepages.reason
    assert isinstance(snap.cpu, CpuReading)




def test_gpu_reading_via_gateway(vm: Path) -> None:
    fake = two_gpus()
    mon = Monitor(Host(vm, nvml_backend=fake), with_audit=False)
    r = mon.snapshot().gpu
    assert isinstance(r, GpusReading)
    h100, rtx = r.gpus
    assert (h100.index, h100.name, h100.uuid) == (0, "NVIDIA H100 80GB HBM3", fake.gpus[0].uuid)
    assert (h100.power_w, h100.power_limit_w) == (312.5, 700.0)
    assert (h100.sm_clock_hz, h100.mem_clock_hz) == (1980_000_000, 2619_000_000)
    assert h100.compute_mode == "EXCLUSIVE_PROCESS" and h100.persistence is True
    assert h100.unsupported == ()
    assert rtx.power_w is None and rtx.unsupported == ("power",)
    assert rtx.power_limit_w == 575.0
    assert rtx.compute_mode == "DEFAULT" and rtx.persistence is False
    mon.snapshot()
    assert fake.inits == 1  # one gateway per Monitor: not re-initialised on every refresh


def test_gpu_lost_keeps_the_others(vm: Path) -> None:
    fake = two_gpus()
    fake.gpus[0].lost = True  # already off the bus at enumeration: no handle at all
    r = Monitor(Host(vm, nvml_backend=fake), with_audit=False).snapshot().gpu
    assert isinstance(r, GpusReading)
    lost, rtx = r.gpus
    assert lost.index == 0 and "GPU_IS_LOST" in lost.name and lost.power_limit_w is None
    assert (rtx.index, rtx.power_limit_w) == (1, 575.0)

    fake = two_gpus()
    mon = Monitor(Host(vm, nvml_backend=fake), with_audit=False)
    mon.snapshot()
    fake.gpus[1].lost = True  # falls off between two scrapes
    r = mon.snapshot().gpu
    assert isinstance(r, GpusReading)
    h100, lost = r.gpus
    assert h100.power_w == 312.5
    assert lost.index == 1 and lost.uuid == fake.gpus[1].uuid
    assert "GPU_IS_LOST" in lost.name and lost.power_limit_w is None and lost.unsupported == ()


def test_gpu_missing_driver_is_unavailable_and_cached() -> None:
    fake = CountingNvml([], driver="no-driver")
    src = GatewaySource(clock=lambda: 100.0)
    host = Host("/", nvml_backend=fake)
    r1, r2 = src(host), src(host)
    assert r1 == Unavailable("no NVIDIA driver (libnvidia-ml.so.1 not found)")  # the gateway's
    assert r2 == r1 and fake.inits == 1  # not re-dlopened on every refresh


def test_gpu_failed_init_is_retried_after_retry_s() -> None:
    now = [1000.0]
    fake = CountingNvml(["h100"], driver="driver-not-loaded")
    host = Host("/", nvml_backend=fake)
    src = GatewaySource(clock=lambda: now[0])
    r = src(host)
    assert isinstance(r, Unavailable) and "not loaded" in r.reason
    fake.driver = "ok"  # modprobe nvidia between two scrapes
    now[0] += gpu_mod.RETRY_S - 1
    assert src(host) == r and fake.inits == 1  # within RETRY_S: the failure is kept
    now[0] += 1
    ok = src(host)
    assert isinstance(ok, GpusReading) and ok.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert fake.inits == 2
    assert host.nvml().available  # the host's gateway was renewed too (the audit shares it)
    for _ in range(3):
        now[0] += 10 * gpu_mod.RETRY_S
        assert isinstance(src(host), GpusReading)
    assert fake.inits == 2  # a working gateway is kept


def test_gpu_offline_is_unavailable(vm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOSTTUNE_FAKE_NVML", raising=False)

    def boom() -> None:
        raise AssertionError("nvmlInit called for a --root tree")

    monkeypatch.setattr(pynvml, "nvmlInit", boom)
    snap = collect(Host(vm), with_audit=False)
    assert snap.gpu == Unavailable(gpu_mod.OFFLINE) and "--root" in snap.gpu.reason
    add_nvidia(vm, ["rtx5090"])  # a tree with a driver is still not a live GPU
    assert collect(Host(vm), with_audit=False).gpu == Unavailable(gpu_mod.OFFLINE)


# --- caching ------------------------------------------------------------------------------------
@pytest.mark.parametrize("uptime_s", [5.0, 10 * 86400.0])
def test_monitor_caches_audit_and_static_layout(tmp_path: Path, monkeypatch, uptime_s) -> None:
    """The first snapshot audits whatever the host's uptime (time.monotonic() counts from boot:
    a host up 5 s must not read as 'audited 5 s ago')."""
    from hosttune.monitor import snapshot as snapshot_mod

    monkeypatch.setattr(snapshot_mod.time, "monotonic", lambda: uptime_s)
    root = full_ryzen(tmp_path)
    mon = Monitor(Host(root), "inference", audit_interval_s=3600)
    s1 = mon.snapshot()
    assert isinstance(s1.audit, AuditSummary), s1.audit
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("39\n")
    s2 = mon.snapshot()
    assert mon.audit is not None and mon.audit.runs == 1  # not re-run every refresh
    assert s1.audit == s2.audit
    assert isinstance(s2.hugepages, HugePagesReading)
    assert s2.hugepages.pools[0].free == 39  # values that move are re-read


# --- CLI ----------------------------------------------------------------------------------------
def test_status_json_cli(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    r = run_cli("status", "--json", "--root", str(root))
    assert r.returncode == 1, r.stderr  # the fake ryzen drifts from 'inference'
    data = json.loads(r.stdout)
    assert data["memlocked"]["mlocked_bytes"] == 123 * MiB
    assert data["audit"]["drift"] > 0
    assert data["gpu"] == {"unavailable": "GPU telemetry is live only (not read under --root)"}
    assert data["store"]["used_bytes"] == 6 * MiB
    assert len(data["containers"]["containers"]) == 3


def test_status_json_gpu_fields_through_the_fake_backend(vm: Path) -> None:
    r = run_cli("status", "--json", "--no-audit", "--root", str(vm),
                env={"HOSTTUNE_FAKE_NVML": "h100,rtx5090"})
    assert r.returncode == 0, r.stderr
    gpus = json.loads(r.stdout)["gpu"]["gpus"]
    assert [set(g) for g in gpus] == [{
        "index", "name", "uuid", "power_w", "power_limit_w", "sm_clock_hz", "mem_clock_hz",
        "compute_mode", "persistence", "unsupported"}] * 2
    assert [(g["name"], g["power_limit_w"], g["compute_mode"], g["unsupported"])
            for g in gpus] == [("NVIDIA H100 80GB HBM3", 700.0, "DEFAULT", []),
                               ("NVIDIA GeForce RTX 5090", 575.0, "DEFAULT", [])]


def test_status_human_cli_80_columns(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    r = run_cli("status", "--root", str(root), env={"COLUMNS": "80"})
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    text = r.stdout
    for needle in ("32 CPUs", "MemLocked 123.0 MiB", "/srv/hosttune/models", "aaaaaaaaaaaa",
                   "splits SMT", "drift"):
        assert needle in text, needle


def test_status_no_drift_exits_0(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    r = run_cli("status", "--json", "--no-audit", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["audit"] == {"unavailable": "audit not requested"}


def test_status_live_host_does_not_crash() -> None:
    r = run_cli("status", "--json")
    assert r.returncode in (0, 1), r.stderr
    data = json.loads(r.stdout)
    live = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, _, v = line.partition(":")
        live[k] = v
    assert data["memory"]["total_bytes"] == int(live["MemTotal"].split()[0]) * 1024
    assert data["containers"].get("cgroup_version") in (1, 2)
