"""Doctor: every defect the seed's scripts leave is found with its fix; each check has its own
minimal tree; a host configured by `hosttune apply` gives no findings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hosttune import doctor, engine
from hosttune.doctor.base import Severity
from hosttune.host import Host
from hosttune.profile import load_profile
from tests.conftest import run_cli
from tests.doctor_helpers import booted, minimal
from tests.seed_tree import seed_tree


def findings(root: Path, **kw):
    return doctor.run(Host(root), **kw).findings


def ids(fs):
    return [f.check for f in fs]


# --- the seed -----------------------------------------------------------------


@pytest.fixture
def seed(tmp_path):
    return seed_tree(tmp_path / "seed")


def test_seed_tree_defects_all_found(seed):
    fs = findings(seed)
    got = {(f.check, f.where.split(":")[0]) for f in fs}
    expected = {
        ("systemd.exec-glob-redirect", "/etc/systemd/system/cpufreq-performance.service"),
        ("systemd.missing-user", "/etc/systemd/system/nvidia-persistenced.service"),
        ("systemd.exec-shell-syntax", "/etc/systemd/system/nvidia-mps.service"),
        ("memlock.unlimited-for-everyone", "/etc/security/limits.conf"),
        ("memlock.login-sessions-only", "/etc/security/limits.conf"),
        ("sysctl.inline-comment", "/etc/sysctl.conf"),
        ("fstab.entry-lost", "live"),
        ("hugetlbfs.mount-smaller-than-pool", "/etc/fstab"),
    }
    missing = expected - got
    assert not missing, (missing, sorted(got))
    # six sysctl lines carry trailing comments; the kernel ignores them (integer keys)
    com = [f for f in fs if f.check == "sysctl.inline-comment"]
    assert len(com) == 6 and {f.severity for f in com} == {Severity.INFO}
    # the hot-swap disk's line went with the swap entry, and the doctor names the sed
    (lost,) = [f for f in fs if f.check == "fstab.entry-lost"]
    assert "/mnt/hotswap-models" in lost.title and lost.severity == Severity.ERROR
    assert "`sudo sed -i '/swap/d' /etc/fstab` (/root/.bash_history:2)" in lost.why
    for f in fs:
        assert f.fix and f.why and f.where


def test_seed_tree_cli_exit_1_json(seed):
    p = run_cli("doctor", "--root", str(seed), "--json")
    assert p.returncode == 1, p.stderr
    data = json.loads(p.stdout)
    assert data["counts"]["error"] >= 5


def test_clean_after_hosttune_apply(ryzen):
    loaded = load_profile("ryzen9950x-rtx5090")
    rep = engine.apply(Host(ryzen), loaded)
    assert rep.ok, rep.error
    fs = findings(ryzen, loaded=loaded)
    assert fs == [], [f.to_json() for f in fs]


# --- one minimal tree per check -----------------------------------------------------------------


def test_exec_pipe_without_shell(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/systemd/system/x.service",
            "[Service]\nExecStop=/usr/bin/echo quit | /usr/bin/nvidia-cuda-mps-control\n")
    (f,) = findings(b.root)
    assert f.check == "systemd.exec-shell-syntax" and f.severity == Severity.ERROR
    assert f.where == "/etc/systemd/system/x.service:2"
    assert "'|'" in f.title


def test_exec_glob_without_shell(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/systemd/system/x.service",
            "[Service]\nExecStart=/usr/bin/cat /sys/devices/system/cpu/cpu*/cpufreq/x\n")
    assert ids(findings(b.root)) == ["systemd.exec-glob"]


def test_glob_redirect_in_shell(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/systemd/system/x.service",
            "[Service]\nExecStart=/bin/sh -c 'echo 1 > /proc/irq/*/smp_affinity'\n")
    assert ids(findings(b.root)) == ["systemd.exec-glob-redirect"]


def test_shell_line_without_glob_is_fine(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/systemd/system/x.service",
            "[Service]\nExecStart=/bin/bash -c 'nvidia-smi -pm 1 && echo ok > /run/x'\n")
    assert findings(b.root) == []


def test_missing_user_and_group(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/systemd/system/x.service", "[Service]\nUser=ghost\nGroup=ghosts\n"
            "ExecStart=/usr/bin/true\n")
    assert sorted(ids(findings(b.root))) == ["systemd.missing-group", "systemd.missing-user"]
    b.write("/etc/systemd/system/x.service", "[Service]\nDynamicUser=yes\nUser=ghost\n")
    assert findings(b.root) == []


def test_memlock_everyone_and_login_only(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/security/limits.d/x.conf", "* - memlock unlimited\n")
    b.process(900, "dockerd", (8 << 20, 8 << 20))
    assert sorted(ids(findings(b.root))) == ["memlock.login-sessions-only",
                                             "memlock.unlimited-for-everyone"]
    # with a LimitMEMLOCK drop-in for docker.service the daemon side is configured
    b.write("/etc/systemd/system/docker.service.d/m.conf", "[Service]\nLimitMEMLOCK=infinity\n")
    b.write("/etc/systemd/system/containerd.service.d/m.conf",
            "[Service]\nLimitMEMLOCK=infinity\n")
    assert ids(findings(b.root)) == ["memlock.unlimited-for-everyone"]


def test_duplicate_sysctl_last_wins(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/sysctl.d/10-a.conf", "vm.swappiness = 10\n")
    b.write("/etc/sysctl.conf", "vm.swappiness = 0\n")
    (f,) = findings(b.root)
    assert f.check == "dup.sysctl"
    assert "'0' (/etc/sysctl.conf)" in f.why and "/etc/sysctl.d/10-a.conf:1" in f.why


def test_duplicate_limits_and_environment(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/security/limits.conf", "@inference hard memlock 1024\n")
    b.write("/etc/security/limits.d/z.conf", "@inference - memlock 2048\n")
    b.write("/etc/environment", "A=1\nB=2\nA=3\n")
    assert sorted(ids(findings(b.root))) == ["dup.environment", "dup.limits"]


def test_sysctl_inline_comment(tmp_path):
    # what a real boot shows (Debian 12, kernel 6.1; and 6.18 here): an integer key takes the
    # number and ignores the comment; a number glued to '#' is EINVAL; a string key keeps it
    b = minimal(tmp_path)
    b.write("/etc/sysctl.d/50-x.conf", "vm.swappiness = 0  # off\nvm.dirty_ratio = 5\n"
            "vm.dirty_background_ratio = 2 ; bg\n")
    fs = findings(b.root)
    assert [(f.check, f.severity, f.where) for f in fs] == [
        ("sysctl.inline-comment", Severity.INFO, "/etc/sysctl.d/50-x.conf:1"),
        ("sysctl.inline-comment", Severity.INFO, "/etc/sysctl.d/50-x.conf:3")]
    assert "takes 0 and ignores '# off'" in fs[0].why and "(live: 60)" in fs[0].why
    b.write("/etc/sysctl.d/50-x.conf", "vm.swappiness = 0# off\n")
    (f,) = findings(b.root)
    assert (f.check, f.severity) == ("sysctl.value-rejected", Severity.ERROR)
    assert "Invalid argument" in f.why


def test_sysctl_comment_on_string_and_lookup_keys(tmp_path):
    b = minimal(tmp_path)
    b.write("/proc/sys/kernel/core_pattern", "core\n")
    b.write("/proc/sys/net/ipv4/tcp_congestion_control", "cubic\n")
    b.write("/etc/sysctl.d/50-x.conf", "kernel.core_pattern = core.%p  # cores\n"
            "net.ipv4.tcp_congestion_control = bbr # faster\n")
    by = {f.where: f for f in findings(b.root)}
    core = by["/etc/sysctl.d/50-x.conf:1"]
    assert (core.check, core.severity) == ("sysctl.comment-in-value", Severity.ERROR)
    assert "'core.%p  # cores' verbatim" in core.why
    cc = by["/etc/sysctl.d/50-x.conf:2"]
    assert (cc.check, cc.severity) == ("sysctl.value-rejected", Severity.ERROR)


def test_sysctl_comment_on_vector_key(tmp_path):
    b = minimal(tmp_path)
    b.write("/proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n")
    b.write("/etc/sysctl.d/50-x.conf", "net.ipv4.ip_local_port_range = 1024 65000 # all\n")
    (f,) = findings(b.root)
    assert f.severity == Severity.INFO and "takes 1024 65000" in f.why
    # fewer numbers than the key holds, then the comment: EINVAL (probed on 6.18)
    b.write("/etc/sysctl.d/50-x.conf", "net.ipv4.ip_local_port_range = 1024 # all\n")
    (f,) = findings(b.root)
    assert f.check == "sysctl.value-rejected"


def test_sysctl_comment_unreadable_key_is_a_warning(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/sysctl.d/50-x.conf", "vm.nosuch = 1 # c\n")
    (f,) = findings(b.root)
    assert (f.check, f.severity) == ("sysctl.inline-comment", Severity.WARNING)


def test_sysctl_block_appended_twice_reported_once(tmp_path):
    # the notes' `tee -a` block run twice: each defect once, with both locations
    b = minimal(tmp_path)
    block = ("# tuning\nvm.swappiness = 0   # off\nvm.dirty_ratio = 5\n"
             "vm.dirty_background_ratio = 2\n")
    b.write("/etc/sysctl.conf", block + block)
    fs = findings(b.root)
    dup = [f for f in fs if f.check == "dup.sysctl-repeated"]
    assert len(dup) == 1 and dup[0].where == "/etc/sysctl.conf:6-8"
    assert dup[0].also == ("/etc/sysctl.conf:2-4",) and dup[0].severity == Severity.INFO
    com = [f for f in fs if f.check == "sysctl.inline-comment"]
    assert len(com) == 1 and com[0].where == "/etc/sysctl.conf:2"
    assert com[0].also == ("/etc/sysctl.conf:6",)
    # "0  # off" and "0" are the same value to the kernel: not "different values"
    assert not [f for f in fs if f.check == "dup.sysctl"]


def test_limits_and_environment_appended_twice(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/security/limits.conf", "@inference soft memlock 1024\n"
            "@inference hard memlock 1024\n@inference soft memlock 1024\n"
            "@inference hard memlock 1024\n")
    b.write("/etc/environment", "PATH=/usr/bin\nA=1\nB=2\nA=1\nB=2\n")
    fs = findings(b.root)
    assert sorted((f.check, f.where, f.also) for f in fs) == [
        ("dup.environment-repeated", "/etc/environment:4-5", ("/etc/environment:2-3",)),
        ("dup.limits-repeated", "/etc/security/limits.conf:3-4",
         ("/etc/security/limits.conf:1-2",))]


def test_fstab_commented_unrelated_mount(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\n#/dev/sdb1 /mnt/swapbay ext4 "
            "defaults 0 2\n#hosttune-disabled# /swap.img none swap sw 0 0\n")
    (f,) = findings(b.root)
    assert f.check == "fstab.overbroad-swap-edit" and f.where == "/etc/fstab:2"


def test_fstab_lines_lost_against_backup(tmp_path):
    b = minimal(tmp_path)
    b.write("/etc/fstab.bak", "UUID=1 / ext4 defaults 0 1\n# swap was on /dev/sda3 during "
            "installation\nUUID=2 none swap sw 0 0\nUUID=3 /srv/swap-archive ext4 "
            "defaults,nofail 0 2\n")
    b.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\n")
    fs = findings(b.root)
    assert sorted((f.check, f.severity, f.where) for f in fs) == [
        ("fstab.entry-lost", Severity.ERROR, "/etc/fstab.bak:4"),
        ("fstab.overbroad-swap-edit", Severity.INFO, "/etc/fstab.bak:2")]
    lost = next(f for f in fs if f.check == "fstab.entry-lost")
    assert "It was not mounted at this boot" in lost.why


def test_mounted_but_not_in_fstab(tmp_path):
    b = minimal(tmp_path)
    b.write("/proc/self/mountinfo", "22 1 253:0 / / rw - ext4 /dev/vda rw\n"
            "40 22 8:1 / /data rw - xfs /dev/sdb1 rw\n")
    (f,) = findings(b.root)
    assert f.check == "fstab.mounted-not-persisted" and "/data" in f.title
    assert f.severity == Severity.WARNING
    # a mount unit of its own persists it
    b.write("/etc/systemd/system/data.mount", "[Mount]\nWhat=/dev/sdb1\nWhere=/data\n")
    assert findings(b.root) == []


SWAPCACHE_MI = ("22 1 253:0 / / rw - ext4 /dev/vda rw\n"
                "41 22 0:40 / /var/cache/swapspace rw,relatime - tmpfs tmpfs rw,size=65536k\n"
                "42 22 0:41 / /run/user/0 rw - tmpfs tmpfs rw\n"
                "43 22 0:42 / /tmp rw - tmpfs tmpfs rw\n")
GENERATED = ("# Automatically generated by systemd-fstab-generator\n\n[Unit]\n"
             "SourcePath=/etc/fstab\n\n[Mount]\nWhat=tmpfs\nWhere=/var/cache/swapspace\n"
             "Type=tmpfs\nOptions=size=64M\n")


def test_tmpfs_deleted_by_swap_sed_right_after_the_scripts(tmp_path):
    # as the guest shows it before the reboot: the tmpfs is mounted, systemd generated its
    # unit from fstab at boot, and the history has the sed that deleted the line
    b = minimal(tmp_path)
    b.write("/proc/self/mountinfo", SWAPCACHE_MI)
    b.write("/run/systemd/generator/var-cache-swapspace.mount", GENERATED)
    b.write("/root/.bash_history", "ls\nsudo swapoff -a\nsudo sed -i '/swap/d' /etc/fstab\n")
    (f,) = findings(b.root)
    assert (f.check, f.severity) == ("fstab.entry-lost", Severity.ERROR)
    assert f.where == "live: /proc/self/mountinfo (/var/cache/swapspace)"
    assert "generated from /etc/fstab at this boot" in f.why
    assert "`sudo sed -i '/swap/d' /etc/fstab` (/root/.bash_history:3)" in f.why
    assert "contains 'swap'" in f.why and "not be mounted after the next reboot" in f.why
    # without the history the generator still proves the line was there at boot
    (b.root / "root/.bash_history").unlink()
    (f,) = findings(b.root)
    assert f.check == "fstab.entry-lost" and "deleted it" not in f.why


def test_fstab_sed_in_a_script_with_backup_suffix(tmp_path):
    b = minimal(tmp_path)
    b.write("/usr/local/sbin/noswap.sh", "#!/bin/sh\nswapoff -a\nsed -i.pre '/swap/d' "
            "/etc/fstab\n", 0o755)
    b.write("/etc/fstab.pre", "UUID=1 / ext4 defaults 0 1\ntmpfs /var/cache/swapspace tmpfs "
            "size=64M 0 0\n/swap.img none swap sw 0 0\n")
    (f,) = findings(b.root)
    assert f.check == "fstab.entry-lost" and f.where == "/etc/fstab.pre:2"
    assert "(/usr/local/sbin/noswap.sh:3)" in f.why


def test_hugetlbfs_mount_vs_pool(tmp_path):
    b = minimal(tmp_path)
    b.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "1024\n")  # 2 GiB
    b.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\nnone /mnt/hp hugetlbfs "
            "pagesize=2M,size=1G 0 0\n")
    assert ids(findings(b.root)) == ["hugetlbfs.mount-smaller-than-pool"]
    b.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\nnone /mnt/hp hugetlbfs "
            "pagesize=2M,size=4G 0 0\n")
    assert ids(findings(b.root)) == ["hugetlbfs.mount-larger-than-pool"]


@pytest.mark.parametrize(("options", "found"), [
    # size= a percentage of the pool of the mount's page size (not of RAM): 50% of 2 GiB
    ("pagesize=2M,size=50%", ["hugetlbfs.mount-smaller-than-pool"]),
    ("size=100%", []),
    # pagesize= read like the kernel does (memparse): 2MiB and 0x200000 are 2M
    ("pagesize=2MiB,size=2G", []), ("pagesize=0x200000,size=2G", []),
    # no such pool here, or no number at all: the mount fails at boot (EINVAL)
    ("pagesize=4M,size=2G", ["hugetlbfs.bad-pagesize"]),
    ("pagesize=bogus,size=2G", ["hugetlbfs.bad-pagesize"])])
def test_hugetlbfs_mount_options_read_like_the_kernel(tmp_path, options, found):
    b = minimal(tmp_path)
    b.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "1024\n")  # 2 GiB
    b.write("/etc/fstab", f"UUID=1 / ext4 defaults 0 1\nnone /mnt/hp hugetlbfs {options} 0 0\n")
    fs = findings(b.root)
    assert ids(fs) == found
    if found == ["hugetlbfs.bad-pagesize"]:
        assert fs[0].where == "/etc/fstab:2" and "Sizes here: 2 MiB" in fs[0].why, fs[0]


def test_pool_leaves_little_ram(tmp_path):
    b = minimal(tmp_path)
    b.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", str(31 * 1024) + "\n")
    (f,) = findings(b.root)  # 62 of 64 GiB
    assert f.check == "hugepages.pool-leaves-little-ram"


def test_doctor_live_is_read_only_and_runs(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze")
    p = run_cli("doctor", "--json")
    assert p.returncode in (0, 1), p.stderr
    json.loads(p.stdout)


def test_units_verified_live_and_skipped_offline(tmp_path, seed):
    from hosttune.doctor.base import DoctorContext
    from hosttune.doctor.checks_systemd import check_units_verify

    # --root: listed as skipped, never run
    rep = doctor.run(Host(seed))
    assert any(c[:2] == ("systemd-analyze", "verify") for c in rep.skipped_commands)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze")

    class LiveUnits(Host):  # the live runner, unit files from a temp dir
        def __init__(self, d):
            super().__init__("/")
            self.d = d

        def listdir(self, p):
            return sorted(x.name for x in self.d.iterdir()) if p == "/etc/systemd/system" \
                else []

        def path(self, p):
            return self.d / p.rsplit("/", 1)[-1] if p.startswith("/etc/systemd/") else \
                super().path(p)

    d = tmp_path / "units"
    d.mkdir()
    (d / "bad.service").write_text("[Service]\nExecStart=bin/true\n")
    (d / "good.service").write_text("[Unit]\nDescription=g\n[Service]\nType=oneshot\n"
                                    "ExecStart=/bin/true\n")
    fs = list(check_units_verify(DoctorContext(LiveUnits(d))))
    assert [f.where for f in fs] == ["/etc/systemd/system/bad.service"]
    assert "absolute path" in fs[0].why


def test_irq_mask_naming_cpus_the_host_lacks(tmp_path):
    # the seed's f0000000 (CPUs 28-31 of the 32-CPU box) on a 2-CPU host: the kernel refuses
    # the write (EOVERFLOW), which the script's 2>/dev/null hides
    from tests.seed_tree import IRQ_SCRIPT

    b = minimal(tmp_path)
    b.cpus([(0, 0, 0, 0, [0], [0, 1]), (1, 0, 1, 0, [1], [0, 1])])  # the 2-CPU guest
    b.write("/usr/local/bin/set-gpu-irq-affinity.sh", IRQ_SCRIPT, 0o755)
    (f,) = findings(b.root)
    assert (f.check, f.severity) == ("irq.mask-names-absent-cpus", Severity.ERROR)
    assert f.where == "/usr/local/bin/set-gpu-irq-affinity.sh:4"
    assert "CPUs 28-31, which this host does not have (CPUs 0-1)" in f.title
    # a mask naming CPU 1 and the absent CPU 2 is refused as a whole too (probed on 6.18)
    b.write("/usr/local/bin/set-gpu-irq-affinity.sh", IRQ_SCRIPT.replace("f0000000", "6"),
            0o755)
    (f,) = findings(b.root)
    assert "CPUs 2, which" in f.title and "of which 2 do not exist" in f.why
    b.write("/usr/local/bin/set-gpu-irq-affinity.sh", IRQ_SCRIPT.replace("f0000000", "2"),
            0o755)
    assert findings(b.root) == []


# --- evidence of the boot (systemd's answers; canned: no systemd as PID 1 on this machine) ----

# systemd 252's formats (Debian 12): list-units --plain --no-legend, journalctl -o cat
# one query for every state a failing unit can be in (doctor/boot.py STATES)
LISTED = ("systemctl", "list-units", "--state=failed,activating,deactivating")
FAILED_UNITS = (
    "cpufreq-performance.service loaded failed failed Set CPU Governor to Performance\n"
    "nvidia-persistenced.service loaded failed failed NVIDIA Persistence Daemon\n")
JOURNAL_CPUFREQ = (
    "Starting cpufreq-performance.service - Set CPU Governor to Performance...\n"
    "/bin/bash: line 1: /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor: No such file "
    "or directory\n"
    "cpufreq-performance.service: Main process exited, code=exited, status=1/FAILURE\n"
    "cpufreq-performance.service: Failed with result 'exit-code'.\n"
    "Failed to start cpufreq-performance.service - Set CPU Governor to Performance.\n")


def test_failed_units_with_the_journals_reason(tmp_path):
    b = minimal(tmp_path)
    h = booted(b.root, {
        LISTED: FAILED_UNITS,
        ("journalctl", "-u", "cpufreq-performance.service"): JOURNAL_CPUFREQ,
    })
    fs = [f for f in doctor.run(h).findings if f.check == "systemd.unit-failed"]
    assert [(f.where, f.severity) for f in fs] == [
        ("live: systemctl --failed (cpufreq-performance.service)", Severity.ERROR),
        ("live: systemctl --failed (nvidia-persistenced.service)", Severity.ERROR)]
    assert "scaling_governor: No such file or directory" in fs[0].why
    assert "status=1/FAILURE" in fs[0].why and "Starting" not in fs[0].why
    assert "no journal lines" in fs[1].why
    # under --root nothing is asked: the commands are listed as skipped
    rep = doctor.run(Host(b.root))
    assert not [f for f in rep.findings if f.check == "systemd.unit-failed"]
    assert any(c[:2] == ("systemctl", "list-units") for c in rep.skipped_commands)


RESTART_JOURNAL = (
    "nvidia-persistenced.service: Failed to locate executable "
    "/usr/bin/nvidia-persistenced: No such file or directory\n"
    "nvidia-persistenced.service: Failed at step EXEC spawning "
    "/usr/bin/nvidia-persistenced: No such file or directory\n")


@pytest.mark.parametrize(("state", "sub"), [
    ("activating", "auto-restart"), ("activating", "start"),
    ("activating", "auto-restart-queued"), ("deactivating", "stop-post")])
def test_unit_in_a_restart_loop(tmp_path, state, sub):
    # the seed's nvidia-persistenced unit without the binary: Restart=on-failure every 5 s,
    # never "failed" (2 starts per 10 s stay under the start limit). The query may land
    # between two tries (auto-restart), during one (start, NRestarts > 0) or right after a
    # failed one, while its ExecStopPost= runs (deactivating, stop-post).
    b = minimal(tmp_path)
    h = booted(b.root, {
        LISTED: f"nvidia-persistenced.service loaded {state} {sub} NVIDIA Persistence Daemon\n",
        ("systemctl", "show", "NRestarts"):
            f"ActiveState={state}\nSubState={sub}\nNRestarts=41\nResult=exit-code\n",
        ("journalctl", "-u", "nvidia-persistenced.service"): RESTART_JOURNAL,
    })
    (f,) = [f for f in doctor.run(h).findings if f.check.startswith("systemd.unit")]
    assert (f.check, f.severity) == ("systemd.unit-restart-loop", Severity.ERROR)
    assert "restarted 41 times" in f.title and "Failed at step EXEC" in f.why
    assert f.where == f"live: systemctl list-units --state={state} (nvidia-persistenced.service)"


# a Type=forking unit whose program is missing, three tries: the child's "Failed at step"
# lines are not in `journalctl -u` (journald lost the exited child's cgroup), PID 1's are
LOOP_TRY = (
    "Starting nvidia-persistenced.service - NVIDIA Persistence Daemon...\n"
    "nvidia-persistenced.service: Control process exited, code=exited, status=203/EXEC\n"
    "nvidia-persistenced.service: Failed with result 'exit-code'.\n"
    "Failed to start nvidia-persistenced.service - NVIDIA Persistence Daemon.\n"
    "nvidia-persistenced.service: Scheduled restart job, restart counter is at 7.\n"
    "Stopped nvidia-persistenced.service - NVIDIA Persistence Daemon.\n")


def test_a_restart_loops_reason_once_with_the_exit_status_explained(tmp_path):
    b = minimal(tmp_path)
    h = booted(b.root, {
        LISTED: "nvidia-persistenced.service loaded activating auto-restart NVIDIA P D\n",
        ("systemctl", "show", "NRestarts"):
            "ActiveState=activating\nSubState=auto-restart\nNRestarts=7\nResult=exit-code\n",
        ("journalctl", "-u", "nvidia-persistenced.service"): LOOP_TRY * 3,
    })
    (f,) = [f for f in doctor.run(h).findings if f.check == "systemd.unit-restart-loop"]
    assert f.why.count("status=203/EXEC") == 1 and f.why.count("Failed with result") == 1
    assert "status EXEC: the program could not be executed (execve failed)" in f.why
    assert "Scheduled restart" not in f.why and "Starting" not in f.why


@pytest.mark.parametrize(("listed", "shown", "loop"), [
    # listed during a try's ExecStopPost=, shown while it waits for the next try
    ("deactivating stop-post", "activating\nSubState=auto-restart\nNRestarts=1", True),
    # listed waiting to restart, shown failed: it hit its start limit in between
    ("activating auto-restart", "failed\nSubState=failed\nNRestarts=5", False),
    # listed starting, shown running: it came up after all
    ("activating start", "active\nSubState=running\nNRestarts=2", None)])
def test_a_unit_is_judged_by_its_state_when_shown(tmp_path, listed, shown, loop):
    b = minimal(tmp_path)
    h = booted(b.root, {LISTED: f"nvidia-persistenced.service loaded {listed} NVIDIA P D\n",
                        ("systemctl", "show", "NRestarts"): f"ActiveState={shown}\n"})
    fs = [f for f in doctor.run(h).findings if f.check.startswith("systemd.unit")]
    if loop is None:
        assert fs == []
    else:
        (f,) = fs
        assert f.check == ("systemd.unit-restart-loop" if loop else "systemd.unit-failed")
        assert f.where.startswith("live: systemctl list-units --state=activating" if loop
                                  else "live: systemctl --failed")


@pytest.mark.parametrize(("state", "line", "props"), [
    # starting for the first time: nothing has failed yet
    ("activating", "slow.service loaded activating start A slow start",
     "SubState=start\nNRestarts=0\n"),
    # restarted once earlier, now stopped by hand: the last try succeeded
    ("deactivating", "web.service loaded deactivating stop-sigterm A web server",
     "SubState=stop-sigterm\nNRestarts=1\nResult=success\n")])
def test_unit_that_is_not_in_a_restart_loop(tmp_path, state, line, props):
    b = minimal(tmp_path)
    h = booted(b.root, {LISTED: line + "\n",
                        ("systemctl", "show", "NRestarts"): f"ActiveState={state}\n" + props})
    assert not [f for f in doctor.run(h).findings if f.check.startswith("systemd.unit")]


def test_fstab_line_lost_seen_in_the_previous_boots_journal(tmp_path):
    # after the reboot: not mounted, no backup; the persistent journal of boot -1 mounted it
    b = minimal(tmp_path)
    b.write("/root/.bash_history", "sudo sed -i '/swap/d' /etc/fstab\n")
    rec = {"UNIT": "var-cache-swapspace.mount",
           "MESSAGE": "Mounted var-cache-swapspace.mount - /var/cache/swapspace."}
    api = {"UNIT": "dev-hugepages.mount", "MESSAGE": "Mounted dev-hugepages.mount - Huge "
           "Pages File System."}
    h = booted(b.root, {("journalctl", "-b", "-1"): json.dumps(rec) + "\n" + json.dumps(api)})
    (f,) = doctor.run(h).findings
    assert (f.check, f.severity, f.where) == ("fstab.entry-lost", Severity.ERROR,
                                              "live: journalctl -b -1")
    assert "Mounted var-cache-swapspace.mount" in f.why and "(/root/.bash_history:1)" in f.why


def test_fstab_line_appended_twice(tmp_path):
    b = minimal(tmp_path)
    hp = "none /mnt/models-hugepages hugetlbfs pagesize=2M,size=1G 0 0\n"
    b.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\n" + hp + hp)
    b.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "1024\n")  # 2 GiB
    b.write("/proc/self/mountinfo", "22 1 253:0 / / rw - ext4 /dev/vda rw\n"
            "41 22 0:50 / /mnt/models-hugepages rw,relatime - hugetlbfs none "
            "rw,pagesize=2M,size=1073741824\n")
    fs = findings(b.root)
    assert sorted((f.check, f.where, f.also) for f in fs) == [
        ("dup.fstab-repeated", "/etc/fstab:3", ("/etc/fstab:2",)),
        ("hugetlbfs.mount-smaller-than-pool", "/etc/fstab:2",
         ("live: /proc/self/mountinfo (/mnt/models-hugepages)", "/etc/fstab:3"))]
    dup = next(f for f in fs if f.check == "dup.fstab-repeated")
    assert dup.severity == Severity.WARNING and "Duplicate entry" in dup.why


def test_live_hugetlbfs_mount_not_in_fstab_vs_pool(tmp_path):
    b = minimal(tmp_path)
    b.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "1024\n")
    b.write("/proc/self/mountinfo", "22 1 253:0 / / rw - ext4 /dev/vda rw\n"
            "41 22 0:50 / /srv/hp rw,relatime - hugetlbfs none rw,pagesize=2M,size=536870912\n")
    (f,) = [f for f in findings(b.root) if f.check.startswith("hugetlbfs")]
    assert f.check == "hugetlbfs.mount-smaller-than-pool"
    assert f.where == "live: /proc/self/mountinfo (/srv/hp)" and "512 MiB" in f.title


def test_pool_short_of_what_boot_asked(tmp_path):
    # the seed's 46080 pages on a small guest: the kernel allocates what it can
    b = minimal(tmp_path)
    b.write("/etc/sysctl.conf", "vm.nr_hugepages=46080\n")
    b.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "1200\n")
    fs = findings(b.root)
    (f,) = [f for f in fs if f.check == "hugepages.pool-short"]
    assert f.severity == Severity.ERROR and f.where == "/etc/sysctl.conf:1"
    assert "asks for 46080 pages; the kernel has 1200" in f.title
    # the reserved pool is what the kernel has, not what was asked
    assert not [f for f in fs if f.check == "hugepages.pool-leaves-little-ram"]


def test_grub_parameters_appended_twice(tmp_path):
    from tests.seed_tree import GRUB_DEFAULT

    b = minimal(tmp_path)
    words = " nvidia-drm.modeset=1 pcie_aspm=off rcutree.rcu_idle_gp_delay=1"
    twice = GRUB_DEFAULT.replace('=1"', '=1' + words + '"', 1)
    b.write("/etc/default/grub", twice)
    b.write("/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet" + words * 2 + "\n")
    fs = [f for f in findings(b.root) if f.check == "dup.kernel-param-repeated"]
    (f,) = fs
    assert f.where == "/etc/default/grub:4" and f.also == ("live: /proc/cmdline",)
    assert "repeats nvidia-drm.modeset=1 pcie_aspm=off rcutree.rcu_idle_gp_delay=1" in f.title


def test_memlock_dropin_but_daemon_not_restarted(tmp_path):
    import os

    b = minimal(tmp_path)
    b.write("/etc/security/limits.d/x.conf", "@inference - memlock unlimited\n")
    b.process(900, "dockerd", (8 << 20, 8 << 20))
    d = b.write("/etc/systemd/system/docker.service.d/m.conf",
                "[Service]\nLimitMEMLOCK=infinity\n")
    btime = 1_700_000_000
    b.write("/proc/stat", f"cpu  1 2 3 4\nbtime {btime}\n")
    tck = os.sysconf("SC_CLK_TCK")
    # proc(5) stat: starttime (field 22) in clock ticks after boot: dockerd started at +100 s
    b.write("/proc/900/stat", "900 (dockerd) S " + " ".join(["0"] * 18) + f" {100 * tck} 0\n")
    os.utime(d, (btime + 500, btime + 500))  # the drop-in was written later
    (f,) = findings(b.root)
    assert (f.check, f.severity) == ("memlock.daemon-not-restarted", Severity.WARNING)
    os.utime(d, (btime + 50, btime + 50))  # written before dockerd started: not effective
    (f,) = findings(b.root)
    assert (f.check, f.severity) == ("memlock.dropin-not-effective", Severity.ERROR)


def test_hand_made_pool_below_hosttunes_mount(tmp_path):
    # seen on the seeded guest after apply: sysctl.conf's vm.nr_hugepages (applied last at
    # boot) sets the pool below the hugetlbfs mount hosttune sized for its own pool
    b = minimal(tmp_path)
    b.write("/etc/sysctl.conf", "vm.nr_hugepages=512\n")
    b.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "512\n")
    b.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\n# hosttune: hugetlbfs /srv/hosttune/models\n"
            "hugetlbfs /srv/hosttune/models hugetlbfs pagesize=2M,size=1249902592,mode=0750 0 0\n")
    (f,) = [f for f in findings(b.root) if f.check.startswith(("hugepages", "hugetlbfs"))]
    assert (f.check, f.severity, f.where) == ("hugepages.pool-overridden", Severity.ERROR,
                                              "/etc/sysctl.conf:1")
    assert f.also == ("/etc/fstab:3",)
    # a hand-made mount larger than the pool stays a warning at the mount
    b.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\n"
            "none /mnt/hp hugetlbfs pagesize=2M,size=30G 0 0\n")
    (f,) = [f for f in findings(b.root) if f.check.startswith(("hugepages", "hugetlbfs"))]
    assert (f.check, f.where) == ("hugetlbfs.mount-larger-than-pool", "/etc/fstab:2")


def test_a_whole_session_run_twice_is_one_block():
    # the seeded guest's sysctl.conf: the echo line and the notes' block, then both again
    from hosttune.doctor.checks_config import Keyed, repeated_blocks

    lines = [69, 74, 77, 78, 79, 82, 83, 84, 85, 90, 93, 94, 95, 98, 99, 100]
    keys = ["nr", "nr", "sw", "zr", "oc", "vfs", "dr", "dbr"] * 2
    got = [([a.lineno for a in x], [b.lineno for b in y]) for x, y in
           repeated_blocks([Keyed("/etc/sysctl.conf", n, k, "v") for n, k in zip(lines, keys)])]
    assert got == [([69], [74]), (lines[:8], lines[8:])]
    # the same key in another file is an override, not a repeat
    assert repeated_blocks([Keyed("/etc/sysctl.d/90-hosttune.conf", 3, "sw", "0"),
                            Keyed("/etc/sysctl.conf", 7, "sw", "0")]) == []
