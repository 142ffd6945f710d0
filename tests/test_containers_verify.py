"""containers verify: the comparison (pure) on literal live states, the daemons' memlock on fake
/proc trees, other containers on the workers' cores; and the CLI of topology/plan/compose."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import yaml

from hosttune.containers.planner import ContainerPlan, plan_workload
from hosttune.containers.verify import (
    LiveContainer,
    check_daemons,
    check_others,
    check_workers,
    compare,
    read_live,
)
from hosttune.host import Host
from hosttune.host.parsers import parse_mountinfo
from hosttune.profile.schema import WorkloadSection
from tests.containers_trees import SEED_COMPOSE, add_nvidia_gpu
from tests.fakehost import limits_text, w

MiB = 1024**2

# /proc/<pid>/mountinfo of a planned container, as dockerd 20.10 sets it up (shortened)
MOUNTINFO = (
    "72 48 0:39 / / ro,relatime master:2 - overlay overlay rw,lowerdir=/var/lib/docker/x\n"
    "73 72 0:41 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
    "80 72 0:45 / /tmp rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,size=8192k,mode=1777\n"
    "91 72 0:39 / /models ro,relatime - hugetlbfs none rw,pagesize=2M,size=8388608\n"
)


def _plan(root: Path, **kw) -> ContainerPlan:
    base = {"cpu_workers": {"count": 2, "memory": "64MiB", "models": ["m.gguf"]},
            "system_cores": 0, "store": "/srv/store", "memlock": "ulimit",
            "memlock_limit": "4MiB", "port_base": None}
    base.update(kw)
    return plan_workload(Host(root).facts, msgspec.convert(base, WorkloadSection, strict=False))


def _live(plan: ContainerPlan, i: int = 0, **kw) -> LiveContainer:
    wk = plan.workers[i]
    caps = (1 << 14) if plan.memlock_mode == "ipc_lock" else 0
    live = LiveContainer(
        id="abc", name=wk.container, labels={}, status="running", exit_code=0, pid=42,
        cpuset_configured=",".join(map(str, wk.cpus)),
        env={"MODEL_PATH": wk.model_path or "", "LLAMA_ARG_THREADS": str(wk.threads)},
        device_ids=tuple(str(g) for g in wk.gpus), cpus=wk.cpus, mems=wk.mems,
        memory_limit=wk.memory_bytes, memory_known=True,
        memlock=(plan.memlock_bytes, plan.memlock_bytes), vmlck_bytes=0, cap_eff=caps,
        cap_bnd=caps, no_new_privs=True, mounts=tuple(parse_mountinfo(MOUNTINFO)),
        visible={wk.model_path or "": True})
    return msgspec.structs.replace(live, **kw)


def _bad(checks) -> list[str]:
    return [c.line() for c in checks if not c.ok]


def test_compare_all_as_planned(ryzen: Path) -> None:
    plan = _plan(ryzen)
    assert _bad(compare(plan, plan.workers[0], _live(plan))) == []
    ipc = _plan(ryzen, memlock="ipc_lock")
    assert _bad(compare(ipc, ipc.workers[0], _live(ipc))) == []


def test_compare_reports_each_mismatch_on_one_line(ryzen: Path) -> None:
    plan = _plan(ryzen)
    wk = plan.workers[0]
    name = wk.container
    live = _live(plan, cpus=tuple(range(32)), cpuset_configured="", memory_limit=None,
                 memlock=(8 * MiB, 8 * MiB), cap_eff=0xA80425FB, no_new_privs=False,
                 mounts=tuple(parse_mountinfo(MOUNTINFO.replace("/ / ro,", "/ / rw,")
                                              .replace("/models ro,", "/models rw,"))),
                 visible={wk.model_path or "": False})
    bad = _bad(compare(plan, wk, live))
    assert f"{name}: cpuset.cpus is 0-31, plan says 0-7,16-23 (started without a cpuset)" \
        in bad
    assert f"{name}: memory limit is unlimited, plan says 64 MiB" in bad
    assert f"{name}: memlock soft/hard is 8 MiB/8 MiB, plan says 4 MiB/4 MiB" in bad
    assert any(b.startswith(f"{name}: capabilities (effective) is AUDIT_WRITE,CHOWN") and
               b.endswith("plan says none") for b in bad)
    assert f"{name}: no-new-privileges is 0, plan says 1" in bad
    assert f"{name}: rootfs is writable, plan says read-only" in bad
    assert f"{name}: mount /models is hugetlbfs writable, plan says hugetlbfs read-only" in bad
    assert any(b.startswith(f"{name}: model file is missing") for b in bad)
    assert all("\n" not in b for b in bad)


def test_compare_stopped_container(ryzen: Path) -> None:
    plan = _plan(ryzen)
    bad = _bad(compare(plan, plan.workers[0], _live(plan, status="exited", exit_code=128,
                                                     pid=0)))
    assert bad == [f"{plan.workers[0].container}: state is exited (exit code 128), plan says "
                   "running"]
    err = "runc create failed: error setting rlimit type 8: operation not permitted"
    bad = _bad(compare(plan, plan.workers[0], _live(plan, status="created", exit_code=128,
                                                     pid=0, error=err)))
    assert bad == [f"{plan.workers[0].container}: state is created (exit code 128), plan says "
                   f"running ({err})"]


def test_compare_gpu_and_shim(ryzen: Path) -> None:
    add_nvidia_gpu(ryzen, local_cpus=list(range(32)))
    plan = _plan(ryzen, gpu_workers={"count": 1, "models": ["g.safetensors"]},
                 shim="/usr/lib/hosttune/libhp.so")
    gpu = plan.worker("gpu-0")
    live = _live(plan, 2, device_ids=())
    bad = _bad(compare(plan, gpu, live))
    assert f"{gpu.container}: GPU devices is none, plan says 0" in bad
    assert f"{gpu.container}: LD_PRELOAD is unset, plan says /opt/hosttune/lib/libhp.so" in bad
    assert any("mount /opt/hosttune/lib/libhp.so is absent" in b for b in bad)


def test_daemon_memlock_is_reported_as_proc_says(ryzen: Path) -> None:
    host = Host(ryzen)  # dockerd and containerd at 8 MiB, no CapEff line: no CAP_SYS_RESOURCE
    ulimit = check_daemons(host, _plan(ryzen, memlock_limit="unlimited"))
    assert [c.line() for c in ulimit if not c.ok] == [
        f"{d}: memlock hard is 8 MiB/8 MiB, no CAP_SYS_RESOURCE, plan says >= unlimited ("
        "containers asking for more fail at start (error setting rlimit type 8): apply the "
        "memlock section (LimitMEMLOCK drop-in) and restart the daemon, or use "
        "workload.memlock: ipc_lock)" for d in ("dockerd", "containerd")]
    small = check_daemons(host, _plan(ryzen))  # 4 MiB fits under 8 MiB
    assert all(c.ok for c in small)
    ipc = check_daemons(host, _plan(ryzen, memlock="ipc_lock", memlock_limit="unlimited"))
    assert all(c.ok for c in ipc) and ipc[0].actual.startswith("8 MiB/8 MiB")
    # a runtime that may raise its own limit (CAP_SYS_RESOURCE) is fine
    w(ryzen, "/proc/1100/status", "Name:\tcontainerd\nCapEff:\t000001ffffffffff\n")
    raised = check_daemons(Host(ryzen), _plan(ryzen, memlock_limit="unlimited"))
    assert [c.subject for c in raised if not c.ok] == ["dockerd"]


def test_read_live_from_proc_and_cgroup_v1(ryzen: Path) -> None:
    cid = "f" * 64
    w(ryzen, "/proc/4242/status", "Name:\tsh\nVmLck:\t    2048 kB\nCapEff:\t0000000000004000\n"
      "CapBnd:\t0000000000004000\nNoNewPrivs:\t1\nCpus_allowed_list:\t0-31\n"
      "Mems_allowed_list:\t0\n")
    w(ryzen, "/proc/4242/cgroup", f"4:memory:/docker/{cid}\n3:cpuset:/docker/{cid}\n"
      f"0::/docker/{cid}\n")
    w(ryzen, "/proc/4242/limits", limits_text(4 * MiB, 4 * MiB))
    w(ryzen, "/proc/4242/mountinfo", MOUNTINFO)
    w(ryzen, f"/sys/fs/cgroup/cpuset/docker/{cid}/cpuset.effective_cpus", "0-3,16-19\n")
    w(ryzen, f"/sys/fs/cgroup/cpuset/docker/{cid}/cpuset.effective_mems", "0\n")
    w(ryzen, f"/sys/fs/cgroup/memory/docker/{cid}/memory.limit_in_bytes", "67108864\n")
    w(ryzen, "/proc/4242/root/models/m.gguf", "x")
    attrs = {"Id": cid, "Name": "/llama-cpu-0", "State": {"Status": "running", "Pid": 4242},
             "Config": {"Env": ["MODEL_PATH=/models/m.gguf", "A=b=c"], "Labels": {"x": "y"}},
             "HostConfig": {"CpusetCpus": "0-3,16-19", "DeviceRequests": [
                 {"Driver": "nvidia", "DeviceIDs": ["0"]}]}}
    live = read_live(Host(ryzen), attrs, ("/models/m.gguf", "/models/none"))
    assert live.cpus == (0, 1, 2, 3, 16, 17, 18, 19)  # the cgroup, not Cpus_allowed_list
    assert live.mems == (0,) and live.memory_limit == 64 * MiB
    assert live.memlock == (4 * MiB, 4 * MiB) and live.vmlck_bytes == 2 * MiB
    assert live.cap_eff == 1 << 14 and live.no_new_privs is True
    assert live.env == {"MODEL_PATH": "/models/m.gguf", "A": "b=c"}
    assert live.device_ids == ("0",) and live.name == "llama-cpu-0"
    assert live.visible == {"/models/m.gguf": True, "/models/none": False}
    w(ryzen, f"/sys/fs/cgroup/memory/docker/{cid}/memory.limit_in_bytes",
      "9223372036854771712\n")
    assert read_live(Host(ryzen), attrs).memory_limit is None


def test_other_containers_on_worker_cores(ryzen: Path) -> None:
    plan = _plan(ryzen, system_cores=1)  # workers 0-6,16-22 and 8-14,24-30; system 15,31
    facts = Host(ryzen).facts

    def other(name: str, cpus, configured: str) -> LiveContainer:
        return LiveContainer(id=name, name=name, labels={}, status="running", exit_code=0,
                             pid=7, cpuset_configured=configured, env={}, device_ids=(),
                             cpus=cpus)

    out = check_others(facts, plan, [
        other("free", (15, 31), "15,31"),
        other("unpinned", tuple(range(32)), ""),
        other("sibling", (16,), "16"),
    ])
    lines = [c.line() for c in out]
    assert not any(x.startswith("free:") for x in lines)
    assert sum(x.startswith("unpinned:") for x in lines) == 2
    assert any(x.startswith("unpinned:") and "started without a cpuset" in x for x in lines)
    assert any(x.startswith("sibling:") and "shares CPUs 16" in x for x in lines)
    idle = _plan(ryzen, system_cores=1, smt="leave-idle")  # workers 0-6 and 8-14
    lines = [c.line() for c in check_others(facts, idle, [other("sibling", (16,), "16")])]
    assert lines == ["sibling: cpuset.cpus is 16, plan says no CPU of hosttune-cpu-0 (not in "
                     "the plan; shares SMT siblings of 0,16)"]


def test_workers_sharing_smt_cores_are_reported(ryzen: Path) -> None:
    # each worker can match its own plan and still share cores with another: the seed's
    # 0-7 / 16-23 pinning on the 9950X (CPU N+16 is the sibling of CPU N)
    facts = Host(ryzen).facts
    assert [c.line() for c in check_workers(facts, {"a": (0, 1, 16, 17), "b": (8, 9, 24, 25)})
            ] == ["workers: shared CPUs or SMT cores is none, plan says none"]
    bad = check_workers(facts, {"a": tuple(range(8)), "b": tuple(range(16, 24))})
    assert [(c.subject, c.check, c.actual, c.ok) for c in bad] == [
        ("a", "shared SMT cores", "0-7,16-23", False)]
    assert "share 8 physical core(s) through SMT siblings" in bad[0].note
    over = check_workers(facts, {"a": (0, 1, 16, 17), "b": (1, 17)})
    assert [(c.check, c.actual) for c in over] == [("shared CPUs", "1,17")]
    assert check_workers(facts, {"a": (0, 16)}) == []


# --- CLI ------------------------------------------------------------------------------------


def test_cli_topology(cli, ryzen: Path, epyc: Path) -> None:
    add_nvidia_gpu(ryzen, local_cpus=list(range(32)))
    r = cli("topology", "--root", str(ryzen), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    node = data["packages"][0]["nodes"][0]
    assert [d["cpus"] for d in node["l3_domains"]] == ["0-7,16-23", "8-15,24-31"]
    assert node["l3_domains"][0]["cores"][0] == [0, 16]
    assert data["sibling_rule"].startswith("CPU N and N+16")
    assert data["gpus"][0]["address"] == "0000:01:00.0"
    r = cli("topology", "--root", str(epyc))
    assert r.exit_code == 0
    assert "2 package(s) · 2 NUMA node(s) · 16 L3 domain(s) · 64 cores / 128 CPUs" in r.output
    assert "L3 #8" in r.output and "GPUs: none" in r.output


def test_cli_plan_and_check(cli, ryzen: Path, tmp_path: Path) -> None:
    add_nvidia_gpu(ryzen, local_cpus=list(range(32)))
    r = cli("containers", "plan", "-p", "ryzen9950x-rtx5090", "--root", str(ryzen))
    assert r.exit_code == 0, r.output
    assert "llama-cpu-0  cpuset 0-3,16-19" in r.output
    seed = tmp_path / "seed-compose.yml"
    seed.write_text(SEED_COMPOSE)
    r = cli("containers", "plan", "-p", "ryzen9950x-rtx5090", "--root", str(ryzen),
            "--check", str(seed), "--json")
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert data["ok"] is True
    kinds = [(f["kind"], f["names"]) for f in data["check"]["findings"]]
    assert ("sibling-sharing", ["llama-cpu-0", "llama-cpu-2"]) in kinds
    assert ("sibling-sharing", ["llama-cpu-1", "gpu-feeder"]) in kinds
    assert ("unpinned", ["unpinned"]) in kinds


def test_cli_plan_refusal_and_errors(cli, vm: Path, tmp_path: Path) -> None:
    r = cli("containers", "plan", "-p", "ryzen9950x-rtx5090", "--root", str(vm))
    assert r.exit_code == 1
    assert "refused:" in r.output
    r = cli("containers", "plan", "-p", "inference", "--root", str(vm))
    assert r.exit_code == 2 and "no 'workload' section" in r.output
    r = cli("containers", "verify", "-p", "ryzen9950x-rtx5090", "--root", str(vm))
    assert r.exit_code == 2 and "--root" in r.output
    r = cli("containers", "compose", "-p", "ryzen9950x-rtx5090", "--root", str(vm))
    assert r.exit_code == 1 and "refused" in r.output


def test_cli_compose_to_file(cli, ryzen: Path, tmp_path: Path) -> None:
    add_nvidia_gpu(ryzen, local_cpus=list(range(32)))
    out = tmp_path / "docker-compose.yml"
    r = cli("containers", "compose", "-p", "ryzen9950x-rtx5090", "--root", str(ryzen),
            "-o", str(out))
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(out.read_text())
    assert doc["services"]["llama-cpu-1"]["cpuset"] == "4-7,20-23"
    assert not list(tmp_path.glob(".docker-compose.yml.*"))  # no temp file left
