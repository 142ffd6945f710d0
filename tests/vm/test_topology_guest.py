"""Scenario: placement on a real kernel's topology, and containers under systemd's dockerd.

One boot of a guest with SMT and NUMA (-smp 8,sockets=1,cores=4,threads=2; two -numa memory
nodes with CPUs 0-3 and 4-7):
1. `hosttune topology --json` against the kernel's own files (/sys/devices/system/cpu/*/
   topology and cache, /sys/devices/system/node) and against hwloc's `lstopo --of xml` run in
   the guest: packages, NUMA nodes, cores with their SMT siblings, L3 domains (tests/hwloc.py).
2. `hosttune apply` of a profile whose memlock section gives docker.service and
   containerd.service the LimitMEMLOCK drop-in (plus a small huge-page pool and the hugetlbfs
   store), the daemons restarted; two models loaded into the store with `hosttune models load`;
   a FROM-scratch busybox image built by the guest's dockerd; `hosttune containers plan` and
   `compose`, the workers started by docker-compose (then `docker update --cpuset-mems`, which
   the plan says compose cannot set); `hosttune containers verify --json`, and independent
   evidence: docker inspect, /proc/<pid>/status and limits and mountinfo of each container's
   process, its cgroup's memory.max, `ulimit -l` and a write to the store inside it.
The agreement tables are written to <logs>/topo/agreement.md (docs/topology-real.md)."""

from __future__ import annotations

import json
import re

import pytest

from hosttune.host.parsers import format_cpulist, parse_cpulist, parse_limits
from tests.hwloc import (
    SYSFS_GLOBS,
    Topo,
    agreement,
    hosttune_view,
    hwloc_view,
    kernel_view,
    markdown,
    parse_grep_h,
)
from tests.vm import checks
from tests.vm import guest as g
from tests.vm.conftest import VmEnv, stage_ok

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]

SMP = "8,sockets=1,cores=4,threads=2"
NODES = ["0-3", "4-7"]
# TCG's default `-cpu max` is an AMD family 0xf CPU without TOPOEXT: Linux then sees no SMT
# at all (every thread_siblings_list a single CPU; arch/x86/kernel/cpu/amd.c reads the sibling
# count from CPUID 0x8000001e only with TOPOEXT). With the Intel vendor Linux reads leaf 0xB,
# which QEMU fills from -smp (threads=2: APIC IDs 2N, 2N+1 are siblings).
CPU = "max,vendor=GenuineIntel"
# The Debian kernel enables AppArmor; dockerd then loads its docker-default profile with
# apparmor_parser, which the image does not have (containers fail: "AppArmor enabled on system
# but the docker-default profile could not be loaded").
CMDLINE = "apparmor=0"
MiB = 1024**2
WORKERS = ("httopo-cpu-0", "httopo-cpu-1")

PROFILE = """name: topo
description: real-boot topology scenario (tests/vm/test_topology_guest.py)
memlock:
  limit: unlimited
  scope: everyone
  services: [docker.service, containerd.service]
hugepages:
  pools:
    - pagesize: 2M
      size: 16MiB
      nodes: spread
  min_free_ram: 25%
  thp: null
hugetlbfs:
  mounts:
    - path: /srv/hosttune/models
      pagesize: 2M
      size: 16MiB
      mode: "0755"
      persist: fstab
workload:
  image: hosttune-topo:scratch
  project: httopo
  cpu_workers: {count: 2, memory: 64MiB, models: [m0.gguf, m1.gguf]}
  system_cores: 0
  memlock: ulimit
  memlock_limit: unlimited
  mlock: false
  port_base: null
  tmpfs_size: 8MiB
"""

# The image's entrypoint (as in tests/test_containers_e2e.py): read the model, then idle.
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
ENTRYPOINT ["/bin/busybox", "sh", "-c", "/bin/busybox sha256sum \\"$MODEL_PATH\\"; \
exec /bin/busybox sleep 2147483647"]
"""

SET_MEMS = """import json, subprocess, sys
for w in json.load(open(sys.argv[1]))["workers"]:
    subprocess.run(["docker", "update", "--cpuset-mems", w["cpuset_mems"], w["container"]],
                   check=True)
"""

STAGE = checks.PRELUDE + f"""
t() {{ echo "$1 $(date +%s.%N)" >> $o/times; }}
t start
grep -H . {' '.join(SYSFS_GLOBS)} > $o/sysfs 2> $o/sysfs.err
run topology.json hosttune topology --json
run lstopo.xml lstopo-no-graphics --of xml -
t topology
run apply.json hosttune apply -p ./topo.yaml --yes --json
systemctl restart containerd.service docker.service
for c in dockerd containerd; do
  p=$(pidof -s $c) && grep 'Max locked memory' /proc/$p/limits > $o/limits-$c
done
t apply
head -c 3000000 /dev/urandom > /tmp/m0.gguf
head -c 1000000 /dev/urandom > /tmp/m1.gguf
run load-m0.json hosttune models load /tmp/m0.gguf -m /srv/hosttune/models --json
run load-m1.json hosttune models load /tmp/m1.gguf -m /srv/hosttune/models --json
mkdir -p /tmp/img && cp /bin/busybox /tmp/img/ && cp Dockerfile /tmp/img/
run build docker build -q -t hosttune-topo:scratch /tmp/img
t image
run plan.json hosttune containers plan -p ./topo.yaml --json
run compose hosttune containers compose -p ./topo.yaml -o $o/compose.yml
# compose waits 60 s for each dockerd answer by default; under TCG on a loaded host dockerd took
# longer to create the two containers (they were up, compose had given up: "Read timed out")
run up env COMPOSE_HTTP_TIMEOUT=600 docker-compose -f $o/compose.yml -p httopo up -d
run update-mems python3 set_mems.py $o/plan.json
t up
run verify.json hosttune containers verify -p ./topo.yaml --json
t verify
for c in {' '.join(WORKERS)}; do
  docker inspect $c > $o/inspect-$c.json
  p=$(docker inspect -f '{{{{.State.Pid}}}}' $c)
  cp /proc/$p/status $o/status-$c; cp /proc/$p/limits $o/limits-$c
  grep -F ' /models ' /proc/$p/mountinfo > $o/mountinfo-$c
  cat /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$p/cgroup)/memory.max > $o/memmax-$c
  docker exec $c /bin/busybox sh -c 'ulimit -l' > $o/ulimit-$c 2>&1
  docker exec $c /bin/busybox touch /models/x > $o/touch-$c 2>&1; echo $? > $o/touch-$c.rc
  docker logs $c > $o/logs-$c 2>&1
done
t evidence
"""


def _cores_of(kernel: Topo, cpus: set[int]) -> list[frozenset[int]]:
    return [c for c in kernel.cores if c & cpus]


def test_topology_and_containers_on_a_numa_smt_guest(vm_env: VmEnv) -> None:
    tree = vm_env.tree("topo")
    vm = vm_env.guest("topo", tree, smp=SMP, machine_args=g.numa_args(g.MEM_MB, NODES),
                      cpu=CPU, cmdline=CMDLINE)
    r = vm.boot(STAGE, label="topology-containers",
                files={"topo.yaml": PROFILE, "Dockerfile": DOCKERFILE, "set_mems.py": SET_MEMS})
    stage_ok(r)
    out = r.out
    times = [ln.split() for ln in out["times"].splitlines()]
    (vm_env.logs / "topo" / "times").write_text(
        f"boot+stage {r.seconds:.0f} s\n" + "\n".join(
            f"{b[0]} {float(b[1]) - float(a[1]):.1f} s" for a, b in zip(times, times[1:],
                                                                         strict=False)))

    # -- 1. three views of the topology ----------------------------------------------------
    assert out["topology.json.rc"].strip() == "0", out["topology.json.err"]
    assert out["lstopo.xml.rc"].strip() == "0", out["lstopo.xml.err"]
    kernel = kernel_view(parse_grep_h(out["sysfs"]))
    ours = hosttune_view(json.loads(out["topology.json"]))
    theirs = hwloc_view(out["lstopo.xml"])
    # what QEMU was asked for reached the kernel (else agreement would prove little)
    assert kernel.pus == set(range(8))
    assert kernel.nodes == {0: frozenset(range(4)), 1: frozenset(range(4, 8))}
    assert len(kernel.cores) == 4 and all(len(c) == 2 for c in kernel.cores)
    assert len(kernel.packages) == 1
    vs_kernel = agreement(ours, kernel)
    vs_hwloc = agreement(ours, theirs)
    (vm_env.logs / "topo" / "agreement.md").write_text(
        markdown(vs_kernel, theirs="kernel (sysfs)") + "\n\n" + markdown(vs_hwloc) + "\n")
    assert [row for row in vs_kernel if not row[3]] == []
    assert [row for row in vs_hwloc if not row[3]] == []

    # -- 2. the plan: whole cores, no SMT sibling shared across workers, one node each ------
    plan = json.loads(out["plan.json"])
    assert out["plan.json.rc"].strip() == "0", plan
    workers = {w["container"]: w for w in plan["workers"]}
    assert sorted(workers) == list(WORKERS)
    used: list[frozenset[int]] = []
    for w in workers.values():
        w["cpus"] = parse_cpulist(w["cpuset_cpus"])
        w["mems"] = parse_cpulist(w["cpuset_mems"])
        cpus = set(w["cpus"])
        cores = _cores_of(kernel, cpus)
        assert all(c <= cpus for c in cores), f"{w['container']}: a partial core in {cpus}"
        assert any(cpus <= n for n in kernel.nodes.values()), f"{cpus} spans NUMA nodes"
        assert set(w["mems"]) == {k for k, n in kernel.nodes.items() if cpus <= n}
        used += cores
    assert len(used) == len(set(used)), f"an SMT core in two workers: {used}"

    # -- 3. verify (it reads the live containers itself) ---------------------------------
    assert out["verify.json.rc"].strip() in ("0", "1"), out["verify.json.err"]
    rep = json.loads(out["verify.json"])
    assert out["verify.json.rc"].strip() == "0" and rep["ok"] is True, rep["mismatches"]
    got = {(c["subject"], c["check"]): c["actual"] for c in rep["checks"]}
    assert got[("workers", "shared CPUs or SMT cores")] == "none"
    for name, w in workers.items():
        cpus = format_cpulist(w["cpus"])
        mems = format_cpulist(w["mems"])
        assert got[(name, "cpuset.cpus")] == cpus
        assert got[(name, "cpuset.mems")] == mems
        assert got[(name, "memlock soft/hard")] == "unlimited/unlimited"
        assert got[(name, "mount /models")] == "hugetlbfs read-only"
        assert got[(name, "memory limit")] == "64 MiB"
        assert got[(name, "model file")] == "visible"

    # -- 4. independent evidence: the daemons got the drop-in ---------------------------
    assert out["apply.json.rc"].strip() in ("0", "1"), out["apply.json.err"]
    applied = json.loads(out["apply.json"])
    assert [s for s in applied["steps"] if s["status"] != "applied"] == [], applied
    for daemon in ("dockerd", "containerd"):
        assert out[f"limits-{daemon}"].split()[3:5] == ["unlimited", "unlimited"], \
            out[f"limits-{daemon}"]
    for step in ("load-m0.json", "load-m1.json", "build", "compose", "up", "update-mems"):
        assert out[f"{step}.rc"].strip() == "0", (step, out[step], out[f"{step}.err"])

    for name, w in workers.items():
        hc = json.loads(out[f"inspect-{name}.json"])[0]["HostConfig"]
        assert parse_cpulist(hc["CpusetCpus"]) == w["cpus"]
        assert parse_cpulist(hc["CpusetMems"]) == w["mems"]
        assert hc["Memory"] == 64 * MiB
        assert {u["Name"]: (u["Soft"], u["Hard"]) for u in hc["Ulimits"]} == \
            {"memlock": (-1, -1)}
        mount = next(m for m in json.loads(out[f"inspect-{name}.json"])[0]["Mounts"]
                     if m["Destination"] == "/models")
        assert mount["Source"] == "/srv/hosttune/models" and mount["RW"] is False
        status = dict(ln.split(":\t", 1) for ln in out[f"status-{name}"].splitlines()
                      if ":\t" in ln)
        assert parse_cpulist(status["Cpus_allowed_list"]) == w["cpus"]
        assert parse_cpulist(status["Mems_allowed_list"]) == w["mems"]
        assert parse_limits(out[f"limits-{name}"])["Max locked memory"] == (None, None)
        fields = out[f"mountinfo-{name}"].split()
        assert fields[4] == "/models" and "ro" in fields[5].split(",")
        assert fields[fields.index("-") + 1] == "hugetlbfs"
        assert out[f"memmax-{name}"].strip() == str(64 * MiB)
        assert out[f"ulimit-{name}"].strip() == "unlimited"
        assert out[f"touch-{name}.rc"].strip() != "0" and "Read-only" in out[f"touch-{name}"]
        # the container read its model through the read-only store
        assert re.search(rf"^[0-9a-f]{{64}}  {re.escape(w['model_path'])}$",
                         out[f"logs-{name}"], re.M), out[f"logs-{name}"]
