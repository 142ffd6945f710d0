"""Scenario: the doctor on a host that the seed notes' commands really configured.

Three boots of one disk (2 CPUs, no NVIDIA driver):
(1) an installer-like fstab (root, a swap file, a tmpfs whose mount point contains "swap"),
    then the notes' commands typed at a root shell (tests/vm/seed_commands.py), the appends
    and the setup script a second time; `hosttune doctor --json` before any reboot;
(2) after the reboot, once the seed's looping unit has been restarted: what systemd and the
    kernel show (failed units and their journal, sysctl values, mounts, dockerd's limits) and
    `hosttune doctor --json`; then `hosttune apply -p inference`;
(3) after the next reboot: `hosttune doctor --json` again - nothing it reports may come from
    a file hosttune wrote.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.vm import checks, seed_commands
from tests.vm.conftest import VmEnv, stage_ok

FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
LABEL=htroot    /               ext4    errors=remount-ro 0       1
# swap was on /swapfile during installation
/swapfile       none            swap    sw              0       0
# scratch for the swapspace daemon's staging files
tmpfs           /var/cache/swapspace tmpfs size=16M,mode=0755 0 0
"""

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]

GUEST_POOL = 512  # 2 MiB pages: 1 GiB of the guest's 3 GiB (see seed_commands.for_guest)

EVIDENCE = r"""
ev() { # ev TAG: what systemd and the kernel say, next to the doctor's report
  local t=$1
  systemctl --failed --no-pager --plain > $o/failed-$t 2>&1
  systemctl list-units --all --no-pager --plain --state=activating,deactivating \
    > $o/activating-$t 2>&1
  # every message of the boot, whatever its fields: the boot transaction's cycle messages
  # come before journald runs, from the kernel log
  journalctl -b -o cat --no-pager | grep -E 'ordering cycle|Found dependency on' \
    > $o/cycle-$t 2>&1 || true
  for u in cpufreq-performance nvidia-persistenced gpu-clocks hosttune-boot docker; do
    systemctl show $u.service -p ActiveState -p Result -p NRestarts -p ExecMainStatus \
      > $o/unit-$u-$t 2>&1
    journalctl -b -u $u.service --no-pager -o cat -n 12 > $o/journal-$u-$t 2>&1
  done
  journalctl -b --no-pager -o cat | grep -iE 'sysctl|fstab|duplicate|hugetlb|swap' \
    > $o/journal-misc-$t 2>&1
  cp /etc/fstab $o/fstab-$t
  findmnt -rn -o TARGET,FSTYPE,OPTIONS > $o/mounts-$t
  for k in vm/swappiness vm/zone_reclaim_mode vm/overcommit_memory vm/vfs_cache_pressure \
           vm/dirty_ratio vm/dirty_background_ratio vm/nr_hugepages; do
    echo "$k $(cat /proc/sys/$k)"; done > $o/sysctl-$t
  grep -E '^(MemTotal|MemFree|MemAvailable|HugePages_Total):' /proc/meminfo > $o/meminfo-$t
  for c in dockerd containerd; do
    p=$(pidof -s $c) && grep 'Max locked memory' /proc/$p/limits > $o/limits-$c-$t
  done
  grep CMDLINE_LINUX_DEFAULT /etc/default/grub > $o/grub-$t
  ls /run/systemd/generator > $o/generator-$t 2>&1
}
settle() { # as after a reboot, once the boot is over: the seed's persistenced unit has failed
  # and been restarted (every 5 s), unless systemd deleted its start job (60 s at most)
  local i
  for i in $(seq 60); do
    [ "$(systemctl show -p NRestarts --value nvidia-persistenced.service)" -ge 1 ] && return
    journalctl -b -o cat | grep -q 'Job nvidia-persistenced.service/start deleted' && return
    sleep 1
  done
}
"""

BOOT1 = checks.PRELUDE + EVIDENCE + """
export PATH=/opt/ht-sudo:$PATH
date +%s > $o/t0
HISTFILE=/root/.bash_history bash -i < ./notes.sh > $o/notes.log 2>&1
date +%s > $o/t1
HISTFILE=/root/.bash_history bash -i < ./rerun.sh > $o/rerun.log 2>&1
date +%s > $o/t2
cp /root/.bash_history $o/bash_history
run doctor-before.json hosttune doctor --json
date +%s > $o/t3
ev before
"""

BOOT2 = checks.PRELUDE + EVIDENCE + """
settle
ev boot
run doctor-boot.json hosttune doctor --json
run apply.json hosttune apply -p inference --yes --json
"""

BOOT3 = checks.PRELUDE + EVIDENCE + """
settle
ev applied
run doctor-applied.json hosttune doctor --json
ls -R /etc/sysctl.d /etc/security/limits.d /etc/systemd/system > $o/etc-listing 2>&1
"""


def findings(text: str) -> list[dict[str, Any]]:
    return json.loads(text)["findings"]


def by_check(fs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in fs:
        out.setdefault(f["check"], []).append(f)
    return out


def test_doctor_on_a_host_the_seed_configured(vm_env: VmEnv) -> None:
    tree = vm_env.tree("seeded")
    tree.swapfile("/swapfile", 32)
    tree.write("/etc/fstab", FSTAB)
    (tree.path / "var/cache/swapspace").mkdir(parents=True, exist_ok=True)
    tree.write("/opt/ht-sudo/sudo", seed_commands.SUDO_WRAPPER, 0o755)
    vm = vm_env.guest("seeded", tree)
    files = {"notes.sh": seed_commands.for_guest(seed_commands.NOTES, GUEST_POOL),
             "rerun.sh": seed_commands.for_guest(seed_commands.RERUN, GUEST_POOL)}

    r1 = vm.boot(BOOT1, files=files, label="seed-scripts")
    stage_ok(r1)
    before = findings(r1.out["doctor-before.json"])
    assert r1.out["doctor-before.json.rc"].strip() == "1", r1.out["doctor-before.json.err"]
    check_seeded_report(before, r1.out, "before")
    lost = one(before, "fstab.entry-lost")
    assert lost["where"] == "live: /proc/self/mountinfo (/var/cache/swapspace)"
    # (no generator evidence here: the session's `systemctl enable` ran daemon-reload after
    # the sed, and the generator's units now match the edited fstab)
    assert lost["severity"] == "error" and "is mounted now (tmpfs" in lost["why"]

    r2 = vm.boot(BOOT2, label="rebooted-apply")
    stage_ok(r2)
    booted = findings(r2.out["doctor-boot.json"])
    check_seeded_report(booted, r2.out, "boot")
    # after the reboot the tmpfs is gone; the persistent journal of boot -1 still knows it
    lost = one(booted, "fstab.entry-lost")
    assert lost["where"] == "live: journalctl -b -1" and "/var/cache/swapspace" in lost["title"]
    assert r2.out["apply.json.rc"].strip() in ("0", "1"), r2.out["apply.json.err"]

    r3 = vm.boot(BOOT3, label="applied")
    stage_ok(r3)
    applied = findings(r3.out["doctor-applied.json"])
    # apply fixed what it owns, at boot: the boot unit ran and the runtimes started (no job of
    # ours deleted to break the seed unit's ordering cycle), dockerd/containerd got the limit,
    # no login-only memlock
    cut = r3.out["cycle-applied"]
    assert not [u for u in ("hosttune-boot", "docker", "containerd") if f"Job {u}." in cut], cut
    boot_unit = r3.out["unit-hosttune-boot-applied"]
    assert "ActiveState=active" in boot_unit and "Result=success" in boot_unit, boot_unit
    assert "unlimited" in r3.out.get("limits-dockerd-applied", ""), \
        r3.out["unit-docker-applied"] + r3.out["journal-docker-applied"]
    assert not [f for f in applied if f["check"] == "memlock.login-sessions-only"]
    # and nothing the doctor reports comes from a file hosttune wrote (0 false alarms)
    ours = hosttune_files(r3.out["fstab-applied"])
    blamed = [f for f in applied for w in (f["where"], *f["also"])
              if any(w == o or w.startswith(o + ":") or w.startswith(o + "/") for o in ours)
              and f["check"] != "hugepages.pool-overridden"]
    assert blamed == [], blamed
    # whatever is new after apply is a hand-made setting overriding hosttune's
    new_checks = {f["check"] for f in applied} - {f["check"] for f in booted}
    assert new_checks <= {"hugepages.pool-overridden"}, new_checks


def one(fs: list[dict[str, Any]], check: str) -> dict[str, Any]:
    got = [f for f in fs if f["check"] == check]
    assert len(got) == 1, (check, got)
    return got[0]


HOSTTUNE_FILES = ("/etc/sysctl.d/90-hosttune.conf",
                  "/etc/security/limits.d/90-hosttune-memlock.conf",
                  "/etc/systemd/system/docker.service.d",
                  "/etc/systemd/system/containerd.service.d",
                  "/etc/systemd/system/hosttune-boot.service", "/etc/hosttune")


def hosttune_files(fstab: str) -> list[str]:
    """Files apply wrote, plus its marked fstab line (the line after '# hosttune: ...')."""
    lines = fstab.splitlines()
    marked = [f"/etc/fstab:{i + 2}" for i, ln in enumerate(lines) if ln.startswith("# hosttune:")]
    return [*HOSTTUNE_FILES, *marked]


def check_seeded_report(fs: list[dict[str, Any]], out: dict[str, str], tag: str) -> None:
    """The report matches what this boot shows (the evidence files of the same stage)."""
    checks_ = by_check(fs)
    # one finding per defect: no (check, title) twice
    keys = [(f["check"], f["title"], f["where"]) for f in fs]
    assert len(keys) == len(set(keys))
    # units: exactly those systemctl lists as failed, with the journal's reason
    failed = {ln.split()[0] for ln in out[f"failed-{tag}"].splitlines()
              if ln.split()[2:3] == ["failed"]}
    assert {f["title"].split()[0] for f in checks_.get("systemd.unit-failed", [])} == failed
    if "cpufreq-performance.service" in failed:
        cpufreq = next(f for f in checks_["systemd.unit-failed"]
                       if f["title"].startswith("cpufreq-performance.service"))
        assert "scaling_governor: No such file or directory" in cpufreq["why"]
        assert "scaling_governor: No such file or directory" in \
            out[f"journal-cpufreq-performance-{tag}"]
    # the seed's governor and persistenced units wait for multi-user.target, which wants
    # them. Alone that is no cycle (systemd leaves out the target's After= on them): the
    # governor unit just starts last. gpu-clocks and the MPS unit, wanted by the target and
    # ordered after persistenced, close one.
    (late,) = checks_["systemd.after-own-target"]
    assert late["where"] == "/etc/systemd/system/cpufreq-performance.service", late
    (cycle,) = checks_["systemd.ordering-cycle"]
    assert cycle["where"] == "/etc/systemd/system/nvidia-persistenced.service", cycle
    assert sorted(cycle["also"]) == \
        ["/etc/systemd/system/gpu-clocks.service", "/etc/systemd/system/nvidia-mps.service"]
    # the start jobs systemd deleted at this boot, all of that cycle (which one differs from
    # boot to boot: the order systemd walks its jobs in); none of the governor unit's
    deleted = sorted(set(re.findall(r"Job (\S+)/start deleted", out[f"cycle-{tag}"])))
    assert "cpufreq-performance.service" not in deleted, out[f"cycle-{tag}"]
    assert (f"deleted the start job of {', '.join(deleted)} to" if deleted
            else "differs from boot to boot") in cycle["why"], (deleted, cycle)
    persistenced = out[f"unit-nvidia-persistenced-{tag}"]
    if "nvidia-persistenced.service" in deleted:
        # systemd broke the cycle by dropping the unit's own start job: it never ran at this
        # boot, so nothing loops
        assert "systemd.unit-restart-loop" not in checks_, checks_["systemd.unit-restart-loop"]
        assert "ActiveState=inactive" in persistenced and "NRestarts=0" in persistenced
    else:
        loop = checks_.get("systemd.unit-restart-loop", [])
        assert len(loop) == 1, (persistenced, out[f"activating-{tag}"], out[f"cycle-{tag}"])
        assert loop[0]["title"].startswith("nvidia-persistenced.service")
        # PID 1's exit status is always there, and what it means; the child's own "Failed at
        # step EXEC spawning" line only when journald caught its cgroup before it exited
        assert "status=203/EXEC" in loop[0]["why"], loop[0]
        assert "status EXEC: the program could not be executed" in loop[0]["why"], loop[0]
        assert loop[0]["why"].count("Failed with result") <= 1, loop[0]
    # sysctl: the kernel took every number; trailing comments are info, never "rejected"
    live = dict(ln.split() for ln in out[f"sysctl-{tag}"].splitlines())
    assert [live[k] for k in ("vm/swappiness", "vm/overcommit_memory", "vm/dirty_ratio")] == \
        ["0", "1", "5"]
    assert "sysctl.value-rejected" not in checks_
    comments = checks_["sysctl.inline-comment"]
    assert len(comments) == 6 and {f["severity"] for f in comments} == {"info"}
    assert all(f["also"] for f in comments), "the rerun's copy is listed, not reported again"
    # dockerd's live memlock vs limits.conf
    assert "8388608" in out[f"limits-dockerd-{tag}"]
    assert len(checks_["memlock.login-sessions-only"]) == 2  # dockerd and containerd
    # the hugetlbfs line appended twice: one duplicate finding, one size finding
    dup = one(fs, "dup.fstab-repeated")
    assert dup["also"], dup
    if tag == "boot":
        assert "Duplicate entry in '/etc/fstab'" in out["journal-misc-boot"]
    size = one(fs, "hugetlbfs.mount-larger-than-pool")
    assert len(size["also"]) == 2  # the live mount and the second fstab line
    # the rerun's appended blocks: reported once each, with both locations
    assert any(f["title"].startswith("a block of") for f in checks_["dup.sysctl-repeated"])
    one(fs, "dup.limits-repeated")
    one(fs, "dup.environment-repeated")
    one(fs, "dup.kernel-param-repeated")
    # the IRQ mask f0000000 names CPUs a 2-CPU host lacks
    masks = checks_["irq.mask-names-absent-cpus"]
    assert {f["where"].split(":")[0] for f in masks} == {
        "/usr/local/bin/set-gpu-irq-affinity.sh", "/usr/local/bin/optimize-gpu.sh"}
    # the sed that deleted the tmpfs line is named, from root's shell history
    lost = one(fs, "fstab.entry-lost")
    assert "`sudo sed -i '/swap/d' /etc/fstab` (/root/.bash_history:" in lost["why"]
