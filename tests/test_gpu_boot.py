"""GPU / driver / boot layer on fake GPU trees: nvidia modprobe options, GPU IRQ affinity,
CUDA environment block, kernel command line. Every tree is a --root tree: commands are
recorded as skipped, never run."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from hosttune import engine
from hosttune.errors import ProfileError
from hosttune.host import Host
from hosttune.host.nvidia_driver import lint_modprobe_conf, parse_modprobe_conf
from hosttune.profile import load_profile
from hosttune.tunables.base import Status
from tests.gpuhost import epyc_2h100, ryzen_5090
from tests.helpers import snapshot

GPU_FAMILIES = {"nvidia_modules", "gpu_irq", "cuda_env", "kernel_cmdline"}


def profile(tmp_path: Path, text: str, name: str = "p"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\n" + text)
    return load_profile(str(p))


def rows_of(report, tunable: str) -> dict[str, object]:
    return {r.key: r for r in report.rows if r.tunable == tunable}


@pytest.fixture
def r5090(tmp_path: Path) -> Path:
    return ryzen_5090(tmp_path / "r5090")


@pytest.fixture
def h100(tmp_path: Path) -> Path:
    return epyc_2h100(tmp_path / "h100")


# --- the built-in profile on the seed's box with an NVIDIA driver layout -----------------------
def test_ryzen_profile_round_trip_on_gpu_tree(r5090):
    loaded = load_profile("ryzen9950x-rtx5090")
    before = snapshot(r5090)
    host = Host(r5090)
    rep = engine.apply(host, loaded, only=GPU_FAMILIES)
    assert rep.ok, (rep.error, [r.to_json() for r in rep.verify if r.status.is_drift])
    assert host.runner.ran == []
    skipped = [" ".join(c) for c in host.runner.skipped]
    assert "update-initramfs -u" in skipped
    assert "update-grub" in skipped
    assert "systemctl daemon-reload" in skipped
    assert "systemctl try-restart irqbalance.service" in skipped

    conf = (r5090 / "etc/modprobe.d/90-hosttune-nvidia.conf").read_text()
    options = [ln for ln in conf.splitlines() if not ln.startswith("#")]
    assert options == ["options nvidia NVreg_EnableGpuFirmware=1 NVreg_EnableResizableBar=1 "
                       "NVreg_PreserveVideoMemoryAllocations=1 NVreg_UsePageAttributeTable=1"]
    assert [f for f in lint_modprobe_conf(conf) if f.severity == "error"] == []
    for irq in (180, 181):
        assert (r5090 / f"proc/irq/{irq}/smp_affinity_list").read_text() == "13,29\n"
    for irq in (182, 190, 100):  # HD audio, amdgpu iGPU, NVMe: untouched
        assert (r5090 / f"proc/irq/{irq}/smp_affinity_list").read_text() == "0-31\n"
    env = (r5090 / "etc/environment").read_text()
    assert "CUDA_CACHE_PATH=/var/cache/cuda\n" in env
    cache = r5090 / "var/cache/cuda"
    st = cache.stat()
    assert stat.S_IMODE(st.st_mode) == 0o770 and st.st_gid == 997
    grub = (r5090 / "etc/default/grub.d/90-hosttune.cfg").read_text()
    assert "pcie_aspm=off" in grub and "rcutree" not in grub

    audit = engine.audit(Host(r5090), loaded, only=GPU_FAMILIES)
    assert not audit.drift, [r.to_json() for r in audit.drift]
    nv = rows_of(audit, "nvidia_modules")
    # configured, but the loaded driver still runs with the old values
    assert nv["nvidia NVreg_EnableResizableBar"].status == Status.NEEDS_REBOOT
    assert nv["nvidia NVreg_EnableGpuFirmware"].status == Status.NEEDS_REBOOT  # 18 != 1
    kc = rows_of(audit, "kernel_cmdline")
    assert kc["pcie_aspm=off"].status == Status.NEEDS_REBOOT
    ce = rows_of(audit, "cuda_env")
    assert "12.2" in ce["CUDA_MODULE_LOADING"].note

    rep2 = engine.apply(Host(r5090), loaded, only=GPU_FAMILIES)
    assert rep2.steps == []
    rb = engine.rollback(Host(r5090))
    assert rb.ok, [s.to_json() for s in rb.steps]
    assert snapshot(r5090) == before


def test_full_builtin_profile_round_trip_on_both_gpu_trees(tmp_path):
    for builder in (ryzen_5090, epyc_2h100):
        root = builder(tmp_path / builder.__name__)
        loaded = load_profile("ryzen9950x-rtx5090")
        before = snapshot(root)
        rep = engine.apply(Host(root), loaded)
        assert rep.ok, rep.error
        assert not engine.audit(Host(root), loaded).drift
        assert engine.apply(Host(root), loaded).steps == []
        assert engine.rollback(Host(root)).ok
        assert snapshot(root) == before


# --- nvidia module options --------------------------------------------------------------------
def test_tcebypass_is_refused_with_the_reason(r5090, tmp_path):
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                     "      NVreg_TCEBypass: 1\n")
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(r5090), loaded)
    msg = str(ei.value)
    assert "nvidia_modules.options.nvidia.NVreg_TCEBypass" in msg
    assert "POWER" in msg and "570.86.15" in msg


def test_unknown_option_refused_naming_the_sources(r5090, tmp_path):
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                     "      NVreg_MakeItFast: 1\n")
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(r5090), loaded)
    assert "no parameter NVreg_MakeItFast" in str(ei.value)
    assert "/proc/driver/nvidia/params" in str(ei.value)


def test_options_come_from_the_installed_driver(r5090, tmp_path):
    # a parameter only this (future) driver knows is accepted because params lists it
    params = r5090 / "proc/driver/nvidia/params"
    params.write_text(params.read_text() + "BrandNewKnob: 0\n")
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                     "      NVreg_BrandNewKnob: 1\n      NVreg_RestrictProfilingToAdminUsers: 0\n")
    rep = engine.audit(Host(r5090), loaded)
    rows = rows_of(rep, "nvidia_modules")
    assert rows["nvidia NVreg_BrandNewKnob"].current == "0"
    # RmProfilingAdminOnly in params is the RestrictProfilingToAdminUsers parameter
    row = rows["nvidia NVreg_RestrictProfilingToAdminUsers"]
    assert row.current == "1"
    assert "CVE-2018-6260" in row.note


def test_without_a_driver_hosttunes_table_is_used(tmp_path):
    root = ryzen_5090(tmp_path / "nodrv", driver=False)
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                     "      NVreg_EnableGpuFirmware: 1\n")
    rep = engine.audit(Host(root), loaded)
    row = rows_of(rep, "nvidia_modules")["nvidia NVreg_EnableGpuFirmware"]
    assert row.current == "module not loaded" and row.status == Status.DRIFT
    bad = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n      NVreg_Nope: 1\n",
                  name="bad")
    with pytest.raises(ProfileError, match="hosttune's table"):
        engine.audit(Host(root), bad)


def test_device_file_mode_compares_by_value_and_is_flagged(r5090, tmp_path):
    params = r5090 / "proc/driver/nvidia/params"
    params.write_text(params.read_text().replace("DeviceFileMode: 438", "DeviceFileMode: 432"))
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                     "      NVreg_DeviceFileMode: '0660'\n")
    assert engine.apply(Host(r5090), loaded).ok
    row = rows_of(engine.audit(Host(r5090), loaded), "nvidia_modules")[
        "nvidia NVreg_DeviceFileMode"]
    assert row.status == Status.OK  # 0660 octal == 432 decimal
    lax = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                  "      NVreg_DeviceFileMode: '0666'\n", name="lax")
    row = rows_of(engine.audit(Host(r5090), lax), "nvidia_modules")["nvidia NVreg_DeviceFileMode"]
    assert "every local user" in row.note


SEED_MODPROBE = """\
# RTX 5090 AI Inference Optimizations
options nvidia NVreg_PreserveVideoMemoryAllocations=1  # Preserve VRAM across suspend
options nvidia NVreg_TemporaryFilePath=/var/tmp        # Fast temp storage
options nvidia NVreg_TCEBypass=1                       # Bypass IOMMU for performance
"""


def test_seed_modprobe_file_is_linted():
    found = lint_modprobe_conf(SEED_MODPROBE)
    msgs = [(f.lineno, f.message) for f in found]
    assert any(n == 2 and "trailing comment" in m and "'# Preserve VRAM" in m for n, m in msgs)
    assert any(n == 4 and "POWER" in m for n, m in msgs)
    assert any("world-writable" in f.message for f in found if f.severity == "warning")
    # the parser sees what modprobe sees: '#' and the comment words are parameters
    ln = parse_modprobe_conf(SEED_MODPROBE)[0]
    assert ln.args[:3] == ("NVreg_PreserveVideoMemoryAllocations=1", "#", "Preserve")


def test_seed_file_on_the_host_is_reported_and_later_files_conflict(r5090, tmp_path):
    (r5090 / "etc/modprobe.d").mkdir(parents=True, exist_ok=True)
    (r5090 / "etc/modprobe.d/nvidia-optimizations.conf").write_text(SEED_MODPROBE)
    (r5090 / "etc/modprobe.d/99-local.conf").write_text(
        "options nvidia NVreg_EnableResizableBar=0\n")
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                     "      NVreg_EnableResizableBar: 1\n")
    rep = engine.audit(Host(r5090), loaded)
    rows = rows_of(rep, "nvidia_modules")
    assert rows["/etc/modprobe.d/nvidia-optimizations.conf:2"].status == Status.CONFLICT
    assert rows["/etc/modprobe.d/nvidia-optimizations.conf:4"].status == Status.CONFLICT
    row = rows["nvidia NVreg_EnableResizableBar"]
    assert row.status == Status.CONFLICT and "99-local.conf:1" in row.note


def test_modprobe_values_with_spaces_or_hash_rejected_by_schema(tmp_path):
    with pytest.raises(ProfileError, match="trailing comments"):
        profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                "      NVreg_TemporaryFilePath: '/srv/x # fast'\n")


def test_rhel_tree_uses_dracut(r5090, tmp_path):
    (r5090 / "etc/os-release").write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia:\n"
                     "      NVreg_EnableGpuFirmware: 1\n")
    p = engine.plan(Host(r5090), loaded)
    cmds = [c.params["argv"] for c in p.changes if c.kind == "command"]
    assert cmds == [["dracut", "-f"]]


# --- GPU IRQ affinity ------------------------------------------------------------------------
def test_node_local_pins_each_h100_to_its_own_node(h100, tmp_path):
    loaded = profile(tmp_path, "gpu_irq:\n  cpus: node-local\n")
    before = snapshot(h100)
    rep = engine.apply(Host(h100), loaded)
    assert rep.ok, rep.error
    assert (h100 / "proc/irq/200/smp_affinity_list").read_text() == "0-31,64-95\n"
    assert (h100 / "proc/irq/300/smp_affinity_list").read_text() == "32-63,96-127\n"
    rows = rows_of(engine.audit(Host(h100), loaded), "gpu_irq")
    row = rows["irq 200 (0000:41:00.0 nvidia)"]
    assert row.status == Status.OK
    # node 0 = CPUs 0-31 and 64-95, printed as the kernel would with 128 possible CPUs
    assert row.note == "mask 00000000,ffffffff,00000000,ffffffff"
    assert engine.rollback(Host(h100)).ok
    assert snapshot(h100) == before


def test_explicit_cpus_must_be_online_where_gpus_exist(r5090, tmp_path):
    loaded = profile(tmp_path, "gpu_irq:\n  cpus: '24-40'\n")
    with pytest.raises(ProfileError, match=r"gpu_irq\.cpus.*32-40.*not online"):
        engine.plan(Host(r5090), loaded)


def test_no_gpu_is_unsupported_not_drift(tmp_path):
    from tests.fakehost import ryzen_9950x

    root = ryzen_9950x(tmp_path / "plain")
    rep = engine.audit(Host(root), profile(tmp_path, "gpu_irq:\n  cpus: '15,31'\n"))
    (row,) = rep.rows
    assert row.status == Status.UNSUPPORTED and "no NVIDIA GPU" in row.note


def test_gpu_without_driver_has_no_irqs_yet(tmp_path):
    root = ryzen_5090(tmp_path / "nodrv", driver=False)
    rep = engine.audit(Host(root), profile(tmp_path, "gpu_irq:\n  cpus: '15,31'\n"))
    (row,) = rep.rows
    assert row.status == Status.UNSUPPORTED and "0000:01:00.0" in row.note


def test_irqbalance_dropin_keeps_args_and_policy_script_bans_only_nvidia(r5090, tmp_path):
    loaded = profile(tmp_path, "gpu_irq:\n  cpus: '15,31'\n")
    assert engine.apply(Host(r5090), loaded).ok
    dropin = (r5090 / "etc/systemd/system/irqbalance.service.d/90-hosttune-gpu.conf").read_text()
    assert "ExecStart=\n" in dropin
    assert ("ExecStart=/usr/sbin/irqbalance --foreground $IRQBALANCE_ARGS "
            "--policyscript=/etc/hosttune/irqbalance-gpu-policy.sh") in dropin
    script = r5090 / "etc/hosttune/irqbalance-gpu-policy.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert not (r5090 / "etc/default/irqbalance").exists()  # shared file untouched

    def policy(bdf: str) -> str:
        dev = os.path.realpath(r5090 / "sys/bus/pci/devices" / bdf)
        out = subprocess.run(["sh", str(script), dev, "180"], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()

    assert policy("0000:01:00.0") == "ban=true"
    assert policy("0000:01:00.1") == ""  # HD audio of the same card
    assert policy("0000:7c:00.0") == ""  # amdgpu iGPU
    assert policy("0000:02:00.0") == ""  # NVMe


def test_runtime_only_reapplies_affinity_without_files(r5090, tmp_path):
    loaded = profile(tmp_path, "gpu_irq:\n  cpus: '15,31'\n")
    p = engine.plan(Host(r5090), loaded, runtime_only=True)
    assert {c.path for c in p.changes} == {"/proc/irq/180/smp_affinity_list",
                                           "/proc/irq/181/smp_affinity_list"}


# --- CUDA environment --------------------------------------------------------------------------
def test_seed_tmp_cache_is_refused_with_why(r5090, tmp_path):
    loaded = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_CACHE_PATH: /tmp/cuda_cache\n")
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(r5090), loaded)
    msg = str(ei.value)
    assert "cuda_env.variables.CUDA_CACHE_PATH" in msg
    assert "wiped at boot" in msg and "plant" in msg and "2857" in msg


def test_world_writable_parent_or_dir_refused(r5090, tmp_path):
    (r5090 / "srv/shared").mkdir(parents=True)
    os.chmod(r5090 / "srv/shared", 0o1777)
    loaded = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_CACHE_PATH: /srv/shared/c\n")
    with pytest.raises(ProfileError, match="world-writable directory"):
        engine.plan(Host(r5090), loaded)
    (r5090 / "srv/cache").mkdir()
    os.chmod(r5090 / "srv/cache", 0o777)
    loaded = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_CACHE_PATH: /srv/cache\n",
                     name="b")
    with pytest.raises(ProfileError, match="already hold planted"):
        engine.plan(Host(r5090), loaded)


def test_cache_maxsize_capped_at_4gib(r5090, tmp_path):
    ok = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_CACHE_MAXSIZE: 4GiB\n")
    p = engine.plan(Host(r5090), ok)
    assert any("CUDA_CACHE_MAXSIZE=4294967296" in (c.value or "") for c in p.changes)
    big = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_CACHE_MAXSIZE: 4294967297\n",
                  name="big")
    with pytest.raises(ProfileError, match=r"CUDA_CACHE_MAXSIZE.*4 GiB"):
        engine.plan(Host(r5090), big)


ENV_BEFORE = 'PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"\nLANG=C.UTF-8'  # no EOL


def test_environment_block_touches_nothing_else_and_reverts_exactly(r5090, tmp_path):
    envf = r5090 / "etc/environment"
    envf.write_text(ENV_BEFORE)
    loaded = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_DEVICE_ORDER: PCI_BUS_ID\n"
                     "    CUDA_LAUNCH_BLOCKING: 0\n")
    assert engine.apply(Host(r5090), loaded).ok
    text = envf.read_text()
    assert text.startswith(ENV_BEFORE + "\n# BEGIN hosttune cuda_env")
    assert text.endswith("CUDA_DEVICE_ORDER=PCI_BUS_ID\nCUDA_LAUNCH_BLOCKING=0\n"
                         "# END hosttune cuda_env\n")
    rows = rows_of(engine.audit(Host(r5090), loaded), "cuda_env")
    assert "no-op" in rows["CUDA_LAUNCH_BLOCKING"].note
    assert engine.rollback(Host(r5090)).ok
    assert envf.read_bytes() == ENV_BEFORE.encode()


def test_rollback_keeps_lines_added_after_apply(r5090, tmp_path):
    envf = r5090 / "etc/environment"
    envf.write_text("LANG=C.UTF-8\n")
    loaded = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_DEVICE_ORDER: PCI_BUS_ID\n")
    assert engine.apply(Host(r5090), loaded).ok
    envf.write_text(envf.read_text() + "EDITOR=vim\n")
    assert engine.rollback(Host(r5090)).ok
    assert envf.read_text() == "LANG=C.UTF-8\nEDITOR=vim\n"


def test_line_after_block_is_a_conflict(r5090, tmp_path):
    loaded = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_DEVICE_ORDER: PCI_BUS_ID\n")
    assert engine.apply(Host(r5090), loaded).ok
    envf = r5090 / "etc/environment"
    envf.write_text(envf.read_text() + "CUDA_DEVICE_ORDER=FASTEST_FIRST\n")
    row = rows_of(engine.audit(Host(r5090), loaded), "cuda_env")["CUDA_DEVICE_ORDER"]
    assert row.status == Status.CONFLICT


def test_cache_dir_with_content_is_removed_on_rollback_and_parents_too(r5090, tmp_path):
    loaded = profile(tmp_path, "cuda_env:\n  variables:\n    CUDA_CACHE_PATH: /var/cache/cuda\n")
    before = snapshot(r5090)
    assert engine.apply(Host(r5090), loaded).ok
    (r5090 / "var/cache/cuda/ComputeCache").mkdir()
    (r5090 / "var/cache/cuda/ComputeCache/index").write_text("x")
    assert engine.rollback(Host(r5090)).ok
    assert snapshot(r5090) == before


# --- kernel command line -----------------------------------------------------------------------
def test_grub_dropin_is_valid_shell_that_appends(r5090, tmp_path):
    (r5090 / "etc/default").mkdir(parents=True, exist_ok=True)
    (r5090 / "etc/default/grub").write_text(
        'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\nGRUB_CMDLINE_LINUX=""\n')
    loaded = profile(tmp_path, "kernel_cmdline:\n  params: [pcie_aspm=off]\n"
                     "  hugepages_1g: 16\n")
    assert engine.apply(Host(r5090), loaded).ok
    out = subprocess.run(
        ["sh", "-c", '. "$1"; . "$2"; echo "$GRUB_CMDLINE_LINUX_DEFAULT"', "sh",
         str(r5090 / "etc/default/grub"), str(r5090 / "etc/default/grub.d/90-hosttune.cfg")],
        capture_output=True, text=True, check=True)
    assert out.stdout == "quiet splash pcie_aspm=off hugepagesz=1G hugepages=16\n"
    assert out.stderr == ""
    # alone (no /etc/default/grub setting the variable) it still parses and appends
    out = subprocess.run(["dash", "-c", '. "$1"; echo "$GRUB_CMDLINE_LINUX_DEFAULT"', "sh",
                          str(r5090 / "etc/default/grub.d/90-hosttune.cfg")],
                         capture_output=True, text=True, check=True)
    assert out.stdout == " pcie_aspm=off hugepagesz=1G hugepages=16\n"


def test_reboot_required_against_proc_cmdline(r5090, tmp_path):
    loaded = profile(tmp_path, "kernel_cmdline:\n  params: [pcie_aspm=off, quiet]\n")
    assert engine.apply(Host(r5090), loaded).ok
    rows = rows_of(engine.audit(Host(r5090), loaded), "kernel_cmdline")
    assert rows["pcie_aspm=off"].status == Status.NEEDS_REBOOT
    assert rows["pcie_aspm=off"].needs == ("reboot",)
    assert rows["quiet"].status == Status.OK  # already on the fake's /proc/cmdline
    (r5090 / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz ro quiet pcie_aspm=off\n")
    rows = rows_of(engine.audit(Host(r5090), loaded), "kernel_cmdline")
    assert rows["pcie_aspm=off"].status == Status.OK
    # last occurrence wins
    (r5090 / "proc/cmdline").write_text("ro quiet pcie_aspm=off pcie_aspm=force\n")
    rows = rows_of(engine.audit(Host(r5090), loaded), "kernel_cmdline")
    assert rows["pcie_aspm=off"].status == Status.NEEDS_REBOOT


def test_obsolete_and_unknown_parameters_warned(r5090, tmp_path):
    from hosttune.tunables.kernel_cmdline import param_warning

    loaded = profile(tmp_path, "kernel_cmdline:\n  params: [rcutree.rcu_idle_gp_delay=1, "
                     "nvidia-drm.modeset=1, pcie_aspm=off, fastboot_please]\n")
    rows = rows_of(engine.audit(Host(r5090), loaded), "kernel_cmdline")
    assert "5.17" in rows["rcutree.rcu_idle_gp_delay=1"].note
    assert "6.1.0-28-amd64" in rows["rcutree.rcu_idle_gp_delay=1"].note
    assert param_warning("pcie_aspm=off", "6.1.0") is None
    assert "not in hosttune's table" in rows["fastboot_please"].note
    assert rows["nvidia-drm.modeset=1"].note == ""  # driver 570: still needed there
    assert "595" in (param_warning("nvidia-drm.modeset=1", "6.8", "595.10") or "")
    assert param_warning("rcutree.rcu_idle_gp_delay=1", "5.15.0") is None
    assert "unknown" in (param_warning("rcutree.rcu_idle_gp_delay=1", None) or "")


def test_rhel_family_uses_grubby_and_reverts_exactly_the_added_args(r5090, tmp_path):
    (r5090 / "etc/os-release").write_text('ID="rhel"\nID_LIKE="fedora"\n')
    (r5090 / "usr/sbin").mkdir(parents=True, exist_ok=True)
    g = r5090 / "usr/sbin/grubby"
    g.write_text("#!/bin/sh\nexit 0\n")
    g.chmod(0o755)
    loaded = profile(tmp_path, "kernel_cmdline:\n  params: [pcie_aspm=off, quiet]\n")
    p = engine.plan(Host(r5090), loaded)
    (cmd,) = [c for c in p.changes if c.kind == "command"]
    assert cmd.params["argv"] == ["grubby", "--update-kernel=ALL", "--args=pcie_aspm=off"]
    assert cmd.params["revert_argv"] == ["grubby", "--update-kernel=ALL",
                                         "--remove-args=pcie_aspm=off"]
    host = Host(r5090)
    assert engine.apply(host, loaded).ok
    rb_host = Host(r5090)
    assert engine.rollback(rb_host).ok
    assert ("grubby", "--update-kernel=ALL", "--remove-args=pcie_aspm=off") in \
        rb_host.runner.skipped


def test_hugepages_param_must_use_hugepages_1g(tmp_path):
    with pytest.raises(ProfileError, match="hugepages_1g"):
        profile(tmp_path, "kernel_cmdline:\n  params: [hugepages=4]\n")


def test_cli_audit_json_on_gpu_tree(r5090, cli):
    r = cli("audit", "--root", str(r5090), "--profile", "ryzen9950x-rtx5090", "--json",
            "--only", "nvidia_modules", "--only", "gpu_irq", "--only", "cuda_env",
            "--only", "kernel_cmdline")
    assert r.exit_code == 1, r.output  # drift before apply
    data = json.loads(r.output)
    keys = {(x["tunable"], x["key"]) for x in data["rows"]}
    assert ("gpu_irq", "irq 180 (0000:01:00.0 nvidia)") in keys


def test_module_without_any_source_is_written_but_marked_unvalidated(tmp_path):
    root = ryzen_5090(tmp_path / "nodrv", driver=False)
    loaded = profile(tmp_path, "nvidia_modules:\n  options:\n    nvidia-uvm:\n"
                     "      uvm_disable_hmm: 1\n")
    rep = engine.apply(Host(root), loaded)
    assert rep.ok
    conf = (root / "etc/modprobe.d/90-hosttune-nvidia.conf").read_text()
    assert "options nvidia_uvm uvm_disable_hmm=1\n" in conf
    row = rows_of(engine.audit(Host(root), loaded), "nvidia_modules")[
        "nvidia_uvm uvm_disable_hmm"]
    assert "not validated" in row.note


def test_audit_works_as_non_root_on_the_live_system():
    """Audit is read-only and needs no root: run it in a child that dropped to 'nobody'."""
    from tests.conftest import need

    need(os.geteuid() == 0, "needs root to drop privileges to nobody")
    loaded = load_profile("ryzen9950x-rtx5090")
    engine.audit(Host("/"), loaded, only=GPU_FAMILIES)  # warm every lazy import as root
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            rep = engine.audit(Host("/"), loaded, only=GPU_FAMILIES)
            os.write(w, json.dumps(rep.to_json()).encode())
            code = 0
        except BaseException as err:  # report whatever broke
            os.write(w, json.dumps({"error": repr(err)}).encode())
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out = json.loads(data)
    assert os.waitstatus_to_exitcode(status) == 0, out
    tunables = {row["tunable"] for row in out["rows"]}
    assert tunables == GPU_FAMILIES
    # the only acceptable error: this VM has no 'inference' group for the cache directory
    errors = [row for row in out["rows"] if row["status"] == "error"]
    assert all("groupadd" in row["note"] for row in errors), errors
    assert not [row for row in out["rows"] if row["status"] == "needs root"]


def test_missing_cache_group_is_a_finding(r5090, tmp_path):
    loaded = profile(tmp_path, "cuda_env:\n  cache_dir_group: gpuusers\n  variables:\n"
                     "    CUDA_CACHE_PATH: /var/cache/cuda\n")
    rep = engine.audit(Host(r5090), loaded)
    row = rows_of(rep, "cuda_env")["cache dir /var/cache/cuda"]
    assert row.status == Status.ERROR and "groupadd" in row.note
    assert not any(c.id == "cuda_env/cache-dir" for c in engine.plan(Host(r5090), loaded).changes)


def test_irqbalance_dropin_passes_systemd_analyze_verify(tmp_path):
    """The drop-in (ExecStart reset + the packaged command line with --policyscript) parses as
    systemd reads it, on top of Debian's irqbalance.service shape; a broken one is flagged."""
    import os
    import shutil
    import subprocess

    from hosttune.tunables.irq_affinity import DROPIN, dropin_text
    from tests.conftest import need

    need(shutil.which("systemd-analyze") is not None, "systemd-analyze not installed")
    true = shutil.which("true") or "/bin/true"
    name = DROPIN.rsplit("/", 1)[1]

    def verify(text: str) -> list[str]:
        units = tmp_path / "units"
        (units / "irqbalance.service.d").mkdir(parents=True, exist_ok=True)
        (units / "irqbalance.service").write_text(
            "[Unit]\nDescription=irqbalance daemon\n\n[Service]\nEnvironmentFile=-/etc/default/"
            f"irqbalance\nExecStart={true} --foreground $IRQBALANCE_ARGS\n\n[Install]\n"
            "WantedBy=multi-user.target\n")
        (units / "irqbalance.service.d" / name).write_text(text)
        env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_LEVEL": "notice"}
        r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                            str(units / "irqbalance.service")],
                           capture_output=True, text=True, env=env, check=False, timeout=60)
        # systemd names the unit (not the drop-in) when the merged result is refused
        return [ln for ln in (r.stdout + r.stderr).splitlines()
                if name in ln or "irqbalance.service" in ln]

    assert verify(dropin_text(f"{true} --foreground $IRQBALANCE_ARGS")) == []
    # without the reset line, a second ExecStart= in a Type=simple service is refused
    assert verify("[Service]\nExecStart=/bin/true --policyscript=/x\n")
