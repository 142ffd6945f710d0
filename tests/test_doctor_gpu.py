"""Doctor, GPU and boot layer: nvidia module options, kernel parameters, GPU IRQ masks and
irqbalance, CUDA cache paths, container cpusets, EXCLUSIVE_PROCESS without MPS, nvidia-smi
clocks/power. The seed tree yields each defect; a host after `hosttune apply` yields none;
each finding has its own minimal tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hosttune import doctor, engine
from hosttune.doctor.base import Severity
from hosttune.host import Host
from hosttune.host.gpu.fake import FakeNvml
from hosttune.profile import load_profile
from tests import fakehost
from tests.conftest import run_cli
from tests.fake_nvidia import add_nvidia
from tests.gpuhost import ryzen_5090
from tests.seed_tree import COMPOSE, COMPOSE_PATH, IRQBALANCE_PID, seed_nvml, seed_tree

GPU_CHECK_PREFIXES = ("nvidia.", "kernel.", "irq.", "cuda.", "containers.", "gpu.")


def run(root: Path, nvml: FakeNvml | None = None, **kw) -> doctor.DoctorReport:
    return doctor.run(Host(root, nvml_backend=nvml), **kw)


def gpu_findings(root: Path, nvml: FakeNvml | None = None, **kw):
    return [f for f in run(root, nvml, **kw).findings if f.check.startswith(GPU_CHECK_PREFIXES)]


def ids(fs):
    return sorted(f.check for f in fs)


@pytest.fixture
def seed(tmp_path):
    return seed_tree(tmp_path / "seed")


@pytest.fixture
def box(tmp_path):
    """The seed's hardware with a clean install: 9950X, RTX 5090 + driver, irqbalance."""
    root = ryzen_5090(tmp_path / "box")
    add_nvidia(root, ["rtx5090"], vendor_unit_user="nvidia-persistenced",
               accounts=("nvidia-persistenced",))
    return root


def irqbalance(b: fakehost.TreeBuilder, *args: str, pid: int = 812) -> None:
    b.write(f"/proc/{pid}/comm", "irqbalance\n")
    b.write(f"/proc/{pid}/cmdline", "\0".join(("/usr/sbin/irqbalance", "--foreground", *args))
            + "\0")


# --- the seed -----------------------------------------------------------------


def _expected_offline() -> set[tuple[str, str]]:
    mp = "/etc/modprobe.d/nvidia-optimizations.conf"
    return {
        ("nvidia.modprobe-trailing-comment", mp),
        ("nvidia.modprobe-unknown-option", mp),
        ("nvidia.modprobe-weakens-isolation", mp),
        ("kernel.param-obsolete", "/etc/default/grub"),
        ("kernel.param-obsolete", "live"),
        ("irq.mask-mismatch", "live"),
        ("irq.mask-mismatch", "/usr/local/bin/set-gpu-irq-affinity.sh"),
        ("irq.mask-mismatch", "/usr/local/bin/optimize-gpu.sh"),
        ("irq.in-container-cpuset", "live"),
        ("irq.irqbalance-overwrites", "live"),
        ("irq.selection-too-broad", "/usr/local/bin/set-gpu-irq-affinity.sh"),
        ("irq.selection-too-broad", "/usr/local/bin/optimize-gpu.sh"),
        ("cuda.cache-path-unsafe", "/etc/environment"),
        ("containers.cpuset-smt-sharing", COMPOSE_PATH),
        ("containers.cpuset-overlap", COMPOSE_PATH),
        ("gpu.exclusive-without-mps", "/usr/local/bin/optimize-gpu.sh"),
    }


def test_seed_gpu_defects_found_offline(seed):
    rep = run(seed)
    fs = [f for f in rep.findings if f.check.startswith(GPU_CHECK_PREFIXES)]
    got = {(f.check, f.where.split(":")[0]) for f in fs}
    missing = _expected_offline() - got
    assert not missing, (missing, sorted(got))
    # every modprobe line carries a trailing comment
    assert ids(fs).count("nvidia.modprobe-trailing-comment") == 6
    tce = next(f for f in fs if f.check == "nvidia.modprobe-unknown-option")
    assert "NVreg_TCEBypass" in tce.title and tce.where.endswith(":6")
    mask = next(f for f in fs if f.check == "irq.mask-mismatch" and f.where.startswith("live"))
    assert "28-31" in mask.why and "24-31" in mask.why and "ff000000" in mask.why
    assert f"/proc/{IRQBALANCE_PID}/" in next(
        f.where for f in fs if f.check == "irq.irqbalance-overwrites")
    smt = {f.title for f in fs if f.check == "containers.cpuset-smt-sharing"}
    assert "llama-cpu-0 / llama-cpu-2: sibling sharing" in smt
    for f in fs:
        assert f.fix and f.why and f.where and "profile key" in f.fix, f
    # without NVML the clock/power values are not guessed: skipped and listed
    assert not any(f.check.startswith(("gpu.clock", "gpu.power")) for f in fs)
    assert any("nvidia-smi settings" in s and "--root" in s for s in rep.skipped_checks)


def test_seed_gpu_defects_with_nvml(seed):
    fs = gpu_findings(seed, seed_nvml())
    got = {(f.check, f.where.split(":")[0]) for f in fs}
    want = _expected_offline() | {
        ("gpu.exclusive-without-mps", "live"),  # NVML's compute mode, and the script
        ("gpu.clock-unsupported", "/usr/local/bin/optimize-gpu.sh"),
        ("gpu.clock-unsupported", "/etc/systemd/system/gpu-clocks.service"),
    }
    missing = want - got
    assert not missing, (missing, sorted(got))
    lmc = next(f for f in fs if f.check == "gpu.clock-unsupported")
    assert "-lmc 3002" in lmc.title and "14001" in lmc.why
    # -pl 600 and -lgc 2400,2550 are within what a 5090 supports: no finding
    assert not any("-lgc" in f.title or "power" in f.title for f in fs)


def test_seed_cli_root_json_lists_skipped_nvml(seed):
    p = run_cli("doctor", "--root", str(seed), "--json")
    assert p.returncode == 1, p.stderr
    data = json.loads(p.stdout)
    checks = {f["check"] for f in data["findings"]}
    assert {"irq.irqbalance-overwrites", "gpu.exclusive-without-mps"} <= checks
    assert any("not checked against the device" in s for s in data["skipped_checks"])


def test_clean_after_apply_on_nvidia_tree(box):
    loaded = load_profile("ryzen9950x-rtx5090")
    nv = FakeNvml(["rtx5090"], root=True)
    rep = engine.apply(Host(box, nvml_backend=nv), loaded)
    assert rep.ok, rep.error
    assert (box / "proc/irq/180/smp_affinity_list").read_text().strip() == "13,29"
    # irqbalance restarted by the apply: it runs with hosttune's policy script now
    irqbalance(fakehost.TreeBuilder(box),
               "--policyscript=/etc/hosttune/irqbalance-gpu-policy.sh")
    r = run(box, nv, loaded=loaded)
    assert r.findings == [], [f.to_json() for f in r.findings]
    assert r.skipped_checks == []
    # offline (as --root sees it) as well
    r = run(box, loaded=loaded)
    assert r.findings == [], [f.to_json() for f in r.findings]


# --- one minimal tree per finding -----------------------------------------------------------------


def test_modprobe_trailing_comment(box):
    fakehost.w(box, "/etc/modprobe.d/nv.conf", "options nvidia NVreg_EnableMSI=1  # msi\n")
    (f,) = gpu_findings(box)
    assert f.check == "nvidia.modprobe-trailing-comment" and f.where.endswith("nv.conf:1")
    # kmod passes '# msi' on; the module logs them as unknown parameters and loads anyway
    assert f.severity == Severity.WARNING and "unknown parameter" in f.why


def test_modprobe_option_unknown_to_installed_driver(box):
    # NVreg_TCEBypassMode is gone from 570.86.15's /proc/driver/nvidia/params
    fakehost.w(box, "/etc/modprobe.d/nv.conf", "# x\noptions nvidia NVreg_TCEBypassMode=1 "
               "NVreg_NoSuchThing=2\n")
    fs = gpu_findings(box)
    assert ids(fs) == ["nvidia.modprobe-unknown-option"] * 2
    assert {f.where for f in fs} == {"/etc/modprobe.d/nv.conf:2"}
    assert any("NVreg_NoSuchThing" in f.title and "/proc/driver/nvidia/params" in f.why
               for f in fs)


def test_modprobe_weakens_isolation(box):
    fakehost.w(box, "/etc/modprobe.d/nv.conf",
               "options nvidia NVreg_DeviceFileMode=0666 NVreg_RestrictProfilingToAdminUsers=0\n"
               "options nvidia NVreg_EnableResizableBar=1\n")
    fs = gpu_findings(box)
    assert ids(fs) == ["nvidia.modprobe-weakens-isolation"] * 2
    assert all(f.severity == Severity.WARNING for f in fs)


def test_kernel_param_obsolete_in_grub_d(box):
    fakehost.w(box, "/etc/default/grub.d/50-x.cfg",
               'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
               'rcutree.rcu_idle_lazy_gp_delay=1 pcie_aspm=off"\n')
    (f,) = gpu_findings(box)
    assert f.check == "kernel.param-obsolete" and f.where == "/etc/default/grub.d/50-x.cfg:1"
    assert "5.17" in f.why
    # on a kernel before 5.17 the parameter still exists
    fakehost.w(box, "/proc/sys/kernel/osrelease", "5.15.0-91-generic\n")
    assert gpu_findings(box) == []


def test_irq_mask_vs_stated_list_and_profile(box):
    fakehost.w(box, "/usr/local/bin/irq.sh", "#!/bin/sh\n# pin to cpus 24-31\n"
               "for i in 180 181; do echo f0000000 > /proc/irq/$i/smp_affinity; done\n", 0o755)
    (f,) = gpu_findings(box)
    assert f.check == "irq.mask-mismatch" and f.where == "/usr/local/bin/irq.sh:3"
    assert "CPUs 28-31, not 24-31" in f.why
    fakehost.w(box, "/usr/local/bin/irq.sh", "#!/bin/sh\n# pin to cpus 28-31\n"
               "for i in 180 181; do echo f0000000 > /proc/irq/$i/smp_affinity; done\n", 0o755)
    assert gpu_findings(box) == []
    # with a profile, its gpu_irq.cpus is the intent (live IRQs still on every CPU)
    fs = gpu_findings(box, loaded=load_profile("ryzen9950x-rtx5090"))
    assert {f.where for f in fs if f.check == "irq.mask-mismatch"} == {
        "/usr/local/bin/irq.sh:3", "live: /proc/irq/{180,181}/smp_affinity"}


def test_irq_in_container_cpuset(box):
    for irq in (180, 181):
        fakehost.w(box, f"/proc/irq/{irq}/smp_affinity", "00002000\n")
        fakehost.w(box, f"/proc/irq/{irq}/smp_affinity_list", "13\n")
    fakehost.w(box, "/opt/app/compose.yaml", "services:\n  a:\n    cpuset: \"29-31\"\n")
    (f,) = gpu_findings(box)
    assert f.check == "irq.in-container-cpuset" and "SMT siblings" in f.why


def test_irqbalance_overwrites_unless_banned(box):
    for irq in (180, 181):
        fakehost.w(box, f"/proc/irq/{irq}/smp_affinity", "20002000\n")
        fakehost.w(box, f"/proc/irq/{irq}/smp_affinity_list", "13,29\n")
    b = fakehost.TreeBuilder(box)
    irqbalance(b)
    (f,) = gpu_findings(box)
    assert f.check == "irq.irqbalance-overwrites" and "180-181" in f.title
    irqbalance(b, "--banirq=180")
    assert ids(gpu_findings(box)) == ["irq.irqbalance-overwrites"]  # 181 still moves
    irqbalance(b, "--banirq=180", "--banirq=181")
    assert gpu_findings(box) == []
    irqbalance(b, "--policyscript=/etc/x.sh")
    assert gpu_findings(box) == []


def test_cuda_cache_world_writable_and_boot_wiped(box):
    (box / "srv/cache").mkdir(parents=True)
    (box / "srv/cache").chmod(0o777)
    fakehost.w(box, "/etc/profile.d/cuda.sh", "export CUDA_CACHE_PATH=/srv/cache/cuda\n")
    fakehost.w(box, "/etc/systemd/system/x.service",
               '[Service]\nEnvironment="CUDA_CACHE_PATH=/run/cuda" "A=1"\nExecStart=/bin/true\n')
    fs = gpu_findings(box)
    assert ids(fs) == ["cuda.cache-path-unsafe"] * 2
    by = {f.where: f for f in fs}
    assert by["/etc/profile.d/cuda.sh:1"].severity == Severity.ERROR
    assert "world-writable" in by["/etc/profile.d/cuda.sh:1"].title
    assert by["/etc/systemd/system/x.service:2"].severity == Severity.WARNING
    assert "wiped at boot" in by["/etc/systemd/system/x.service:2"].title


def test_cuda_cache_from_a_units_environment_file(box):
    """EnvironmentFile= is followed (a leading '-' only makes it optional); /etc/environment,
    read on its own, is not reported twice."""
    fakehost.w(box, "/etc/default/llama", "# llama workers\nCUDA_CACHE_PATH=/run/cuda\n")
    fakehost.w(box, "/etc/systemd/system/llama.service",
               "[Service]\nEnvironmentFile=-/etc/default/llama\n"
               "EnvironmentFile=/etc/environment\nEnvironmentFile=-/etc/default/absent\n"
               "ExecStart=/bin/true\n")
    (f,) = gpu_findings(box)
    assert f.check == "cuda.cache-path-unsafe" and f.where == "/etc/default/llama:2"
    assert "wiped at boot" in f.title


def test_cuda_cache_on_tmpfs_in_compose(box):
    mi = (box / "proc/self/mountinfo").read_text()
    fakehost.w(box, "/proc/self/mountinfo",
               mi + "60 22 0:60 / /var/cache/cuda rw - tmpfs tmpfs rw,size=1G\n")
    fakehost.w(box, "/opt/x/docker-compose.yml", "services:\n  w:\n    environment:\n"
               "      - CUDA_CACHE_PATH=/var/cache/cuda\n")
    (f,) = gpu_findings(box)
    assert f.check == "cuda.cache-path-unsafe" and f.where == "/opt/x/docker-compose.yml:3"
    assert "tmpfs" in f.why


def test_compose_cpusets_overlap_and_smt(box):
    fakehost.w(box, "/opt/llama/docker-compose.yml", "services:\n  a:\n    cpuset: \"0-3\"\n"
               "  b:\n    cpuset: \"3-5\"\n  c:\n    cpuset: \"16\"\n")
    fs = gpu_findings(box)
    assert ids(fs) == ["containers.cpuset-overlap", "containers.cpuset-smt-sharing"]
    assert {f.where for f in fs} == {"/opt/llama/docker-compose.yml:3"}
    # a file given with --compose is checked too, wherever it is
    fakehost.w(box, "/home/me/stack.yml",
               "services:\n  a:\n    cpuset: \"0\"\n  b:\n    cpuset: \"0\"\n")
    (box / "opt/llama/docker-compose.yml").unlink()
    assert gpu_findings(box) == []
    fs = gpu_findings(box, compose_files=["/home/me/stack.yml"])
    assert ids(fs) == ["containers.cpuset-overlap"]


def test_exclusive_process_without_mps(box):
    fakehost.w(box, COMPOSE_PATH, COMPOSE)
    nv = FakeNvml(["rtx5090"], root=True)
    nv.gpus[0].compute_mode = 3
    fs = [f for f in gpu_findings(box, nv) if f.check.startswith("gpu.")]
    assert [(f.check, f.where) for f in fs] == [("gpu.exclusive-without-mps",
                                                 "live: NVML gpu0 compute mode")]
    assert "llama-gpu-0, llama-gpu-1" in fs[0].why
    # an MPS control daemon multiplexes the clients: fine
    fakehost.w(box, "/proc/900/comm", "nvidia-cuda-mps-control\n")
    assert not [f for f in gpu_findings(box, nv) if f.check.startswith("gpu.")]
    # DEFAULT compute mode: fine, and a script's `-c 3` counts when NVML is not there
    nv.gpus[0].compute_mode = 0
    (box / "proc/900/comm").unlink()
    assert not [f for f in gpu_findings(box, nv) if f.check.startswith("gpu.")]
    fakehost.w(box, "/etc/systemd/system/cm.service",
               "[Service]\nExecStart=/usr/bin/nvidia-smi -i 0 -c 3\n")
    for nvml in (None, nv):  # offline, and live while the GPU is (still) in DEFAULT
        fs = [f for f in gpu_findings(box, nvml) if f.check.startswith("gpu.")]
        assert [(f.check, f.where) for f in fs] == [("gpu.exclusive-without-mps",
                                                     "/etc/systemd/system/cm.service:2")]


def test_gpu_power_and_clock_out_of_range(box):
    fakehost.w(box, "/usr/local/bin/gpu.sh", "#!/bin/bash\nnvidia-smi -i 0 -pl 650\n"
               "nvidia-smi --lock-gpu-clocks=2400,3300 && nvidia-smi -pl 450\n", 0o755)
    nv = FakeNvml(["rtx5090"], root=True)
    fs = gpu_findings(box, nv)
    assert [(f.check, f.where) for f in fs] == [
        ("gpu.power-out-of-range", "/usr/local/bin/gpu.sh:2"),
        ("gpu.clock-out-of-range", "/usr/local/bin/gpu.sh:3")]
    assert "400-600 W" in fs[0].title and "3300" in fs[1].why
    # the same script on an H100 (350-700 W): only the clock (max 1980 MHz) is wrong
    fs = gpu_findings(box, FakeNvml(["h100"], root=True))
    assert ids(fs) == ["gpu.clock-out-of-range"]


def test_gpu_clocks_skipped_without_nvml(box):
    fakehost.w(box, "/usr/local/bin/gpu.sh", "#!/bin/bash\nnvidia-smi -pl 650\n", 0o755)
    rep = run(box)
    assert not [f for f in rep.findings if f.check.startswith("gpu.")]
    assert len(rep.skipped_checks) == 1 and "/usr/local/bin/gpu.sh:2" in rep.skipped_checks[0]


def test_kernel_param_unknown_to_its_module(box):
    """A parameter a loaded module does not export (sysfs) is reported as a hint; one it
    exports, a built-in's early switch (random.trust_cpu) and an absent module's are not."""
    fakehost.w(box, "/sys/module/kvm_amd/initstate", "live\n")  # a loaded module
    fakehost.w(box, "/sys/module/kvm_amd/parameters/npt", "1\n")
    fakehost.w(box, "/sys/module/random/parameters/ratelimit_disable", "0\n")  # built in
    fakehost.w(box, "/etc/default/grub.d/50-x.cfg",
               'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT kvm-amd.nptt=1 '
               'kvm_amd.npt=1 random.trust_cpu=1 nomodule.x=1"\n')
    (f,) = gpu_findings(box)
    assert f.check == "kernel.param-unknown" and f.severity == Severity.INFO
    assert f.where == "/etc/default/grub.d/50-x.cfg:1" and "no parameter nptt " in f.why


def test_grep_patterns_as_grep_reads_them():
    from hosttune.doctor.checks_gpu_irq import _grep_pattern

    line = " 190:  0  0  IR-PCI-MSI-0000:0c:00.0  0-edge  amdgpu"
    assert _grep_pattern(["grep", "-E", "nvidia|gpu"]).search(line)
    assert _grep_pattern(["grep", "nvidia\\|gpu"]).search(line)  # GNU BRE alternation
    assert not _grep_pattern(["grep", "nvidia|gpu"]).search(line)  # BRE: '|' is literal
    assert _grep_pattern(["grep", "-i", "AMDGPU"]).search(line)
    assert not _grep_pattern(["grep", "-F", "gpu.*"]).search(line)
    assert _grep_pattern(["grep", "-e", "amd", "-c"]).search(line)
    assert _grep_pattern(["grep", "-P", "gpu"]) is None  # Perl syntax: not guessed at


def test_irq_selection_findings(box):
    """A grep that catches the iGPU too, one that catches no NVIDIA IRQ, and hosttune-like
    precise selection (none)."""
    fakehost.w(box, "/usr/local/bin/broad.sh", "#!/bin/sh\n"
               "for i in $(grep gpu /proc/interrupts | cut -d: -f1); do\n"
               "  echo 3000 > /proc/irq/$i/smp_affinity\ndone\n", 0o755)
    fakehost.w(box, "/usr/local/bin/miss.sh", "#!/bin/sh\n"
               "IRQS=$(egrep 'nvme|xhci' /proc/interrupts | awk '{print $1}')\n", 0o755)
    fakehost.w(box, "/usr/local/bin/exact.sh", "#!/bin/sh\n"
               "IRQS=$(grep -w nvidia /proc/interrupts | awk '{print $1}')\n", 0o755)
    def selection() -> dict:
        return {f.where.split(":")[0]: f for f in run(box).findings
                if f.check.startswith("irq.selection")}

    fs = selection()
    assert fs["/usr/local/bin/broad.sh"].check == "irq.selection-too-broad"
    assert "amdgpu" in fs["/usr/local/bin/broad.sh"].title
    assert fs["/usr/local/bin/miss.sh"].check == "irq.selection-too-broad"
    assert "IRQ 100 (nvme0q0), 101 (nvme0q0)" in fs["/usr/local/bin/miss.sh"].title
    assert "/usr/local/bin/exact.sh" not in fs
    fakehost.w(box, "/usr/local/bin/miss.sh", "#!/bin/sh\n"
               "IRQS=$(grep -E 'xhci|ahci' /proc/interrupts | awk '{print $1}')\n", 0o755)
    fs = selection()
    assert fs["/usr/local/bin/miss.sh"].check == "irq.selection-misses-gpu"
    assert "180-181" in fs["/usr/local/bin/miss.sh"].why
