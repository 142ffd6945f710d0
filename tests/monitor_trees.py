"""Fake trees for the monitor, exporter and watch tests (additions on top of tests/fakehost.py):
a Ryzen 9950X with per-CPU frequencies, huge pages, a model store and docker containers under
cgroup v1 or v2, and a counting fake NVML with two GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pynvml

from hosttune.host.gpu.fake import FakeNvml
from tests import fakehost

MiB = 1024**2
CID_A = "a" * 64
CID_B = "b" * 64
CID_C = "c" * 64


def add_cpu_freqs(root: Path, n: int) -> dict[int, float]:
    """Distinct "cpu MHz" per CPU and scaling_cur_freq per policy; governors mixed."""
    mhz = {i: 3000.0 + i * 10.5 for i in range(n)}
    (root / "proc/cpuinfo").write_text("".join(
        f"processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: {mhz[i]:.3f}\n\n"
        for i in range(n)))
    pol = root / "sys/devices/system/cpu/cpufreq"
    for i in range(n):
        if (pol / f"policy{i}").exists():
            (pol / f"policy{i}/scaling_cur_freq").write_text(f"{4000000 + i * 1000}\n")
            (pol / f"policy{i}/scaling_governor").write_text(
                "performance\n" if i % 2 else "powersave\n")
    return mhz


def set_hugepages(root: Path, size_kb: int, *, total: int, free: int, resv: int, surp: int,
                  per_node: dict[int, tuple[int, int, int]]) -> None:
    g = root / f"sys/kernel/mm/hugepages/hugepages-{size_kb}kB"
    for f, v in (("nr_hugepages", total), ("free_hugepages", free), ("resv_hugepages", resv),
                 ("surplus_hugepages", surp)):
        (g / f).write_text(f"{v}\n")
    for node, (t, fr, s) in per_node.items():
        d = root / f"sys/devices/system/node/node{node}/hugepages/hugepages-{size_kb}kB"
        for f, v in (("nr_hugepages", t), ("free_hugepages", fr), ("surplus_hugepages", s)):
            (d / f).write_text(f"{v}\n")


def set_mlocked(root: Path, mem_total: int, mlocked: int) -> None:
    (root / "proc/meminfo").write_text(fakehost.meminfo(mem_total, mlocked=mlocked,
                                                        hp_total=100, hp_free=40))


def add_mounts(root: Path, lines: list[str]) -> None:
    mi = root / "proc/self/mountinfo"
    mi.write_text(mi.read_text() + "\n".join(lines) + "\n")


def add_store(root: Path) -> dict[str, int]:
    add_mounts(root, ["40 22 0:40 / /srv/hosttune/models rw,relatime shared:9 - hugetlbfs "
                      "hugetlbfs rw,pagesize=2M,size=4G,mode=750"])
    files = {"llama-q8.gguf": 3 * MiB + 5, "sub/tiny.gguf": 2 * MiB}
    for name, size in files.items():
        p = root / "srv/hosttune/models" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as fh:
            fh.truncate(size)
    return files


def add_process(root: Path, pid: int, vmlck_kb: int) -> None:
    fakehost.w(root, f"/proc/{pid}/status", f"Name:\tllama-server\nVmPeak:\t  100 kB\n"
               f"VmLck:\t{vmlck_kb:>8} kB\nVmPin:\t       0 kB\n")


# (id, cpuset, pids with VmLck kB, cpu ns, memory bytes)
CONTAINERS = [
    (CID_A, "0-7,16-23", {4001: 1024, 4002: 2048}, 5_000_000_000, 700 * MiB),  # whole cores
    (CID_B, "8-15", {4101: 0}, 1_500_000_000, 300 * MiB),  # splits siblings 24-31
    (CID_C, "0-31", {4201: 4}, 0, MiB),  # not pinned
]


def add_cgroup_v1(root: Path) -> None:
    """Docker with the cgroupfs driver on cgroup v1 (as on this VM): separate controllers."""
    lines = []
    for i, ctl in enumerate(("cpu", "cpuacct", "cpuset", "memory")):
        lines.append(f"{50 + i} 30 0:{50 + i} / /sys/fs/cgroup/{ctl} rw,relatime shared:{20 + i}"
                     f" - cgroup cgroup rw,{ctl}")
    lines.append("60 30 0:60 / /sys/fs/cgroup/unified rw,relatime shared:30 - cgroup2 cgroup2 rw")
    add_mounts(root, lines)
    for cid, cpus, pids, ns, mem in CONTAINERS:
        cg = "/sys/fs/cgroup"
        fakehost.w(root, f"{cg}/cpuacct/docker/{cid}/cpuacct.usage", f"{ns}\n")
        fakehost.w(root, f"{cg}/cpuacct/docker/{cid}/cgroup.procs",
                   "".join(f"{p}\n" for p in pids))
        fakehost.w(root, f"{cg}/memory/docker/{cid}/memory.usage_in_bytes", f"{mem}\n")
        fakehost.w(root, f"{cg}/memory/docker/{cid}/cgroup.procs", "".join(f"{p}\n" for p in pids))
        fakehost.w(root, f"{cg}/cpuset/docker/{cid}/cpuset.cpus", f"{cpus}\n")
        fakehost.w(root, f"{cg}/cpuset/docker/{cid}/cpuset.effective_cpus", f"{cpus}\n")
        for pid, kb in pids.items():
            add_process(root, pid, kb)
    # a non-container cgroup next to them must be ignored
    fakehost.w(root, "/sys/fs/cgroup/memory/docker/not-a-container/memory.usage_in_bytes", "1\n")


def add_cgroup_v2(root: Path) -> None:
    """Docker with the systemd driver on a pure cgroup v2 host."""
    add_mounts(root, ["50 30 0:50 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:20 "
                      "- cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot"])
    for cid, cpus, pids, ns, mem in CONTAINERS:
        d = f"/sys/fs/cgroup/system.slice/docker-{cid}.scope"
        fakehost.w(root, f"{d}/cpu.stat", f"usage_usec {ns // 1000}\nuser_usec 1\nsystem_usec 1\n")
        fakehost.w(root, f"{d}/memory.current", f"{mem}\n")
        fakehost.w(root, f"{d}/cpuset.cpus.effective", f"{cpus}\n")
        fakehost.w(root, f"{d}/cgroup.procs", "".join(f"{p}\n" for p in pids))
        for pid, kb in pids.items():
            add_process(root, pid, kb)


def full_ryzen(tmp_path: Path) -> Path:
    root = fakehost.ryzen_9950x(tmp_path / "ryzen")
    add_cpu_freqs(root, 32)
    set_mlocked(root, 128 * fakehost.GiB, 123 * MiB)
    set_hugepages(root, 2048, total=100, free=40, resv=10, surp=2, per_node={0: (100, 40, 2)})
    add_store(root)
    add_cgroup_v1(root)
    return root


# --- GPU: the project's fake NVML backend -------------------------------------------------------
class CountingNvml(FakeNvml):
    """The project's fake, counting nvmlInit calls (each one a dlopen + driver handshake)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        super().nvmlInit()


def two_gpus() -> CountingNvml:
    """A busy H100 (312.5 W, SM locked at 1980 MHz, EXCLUSIVE_PROCESS, persistence on) and an
    RTX 5090 whose board has no power sensor: power.draw is NOT_SUPPORTED ([N/A])."""
    fake = CountingNvml(["h100", "rtx5090"])
    h100, rtx = fake.gpus
    h100.model.idle_power_mw = 312_500
    h100.locked_graphics = (1980, 1980)
    h100.compute_mode = pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS
    h100.persistence = pynvml.NVML_FEATURE_ENABLED
    rtx.model.power_sensor = False
    return fake
