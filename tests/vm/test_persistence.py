"""Scenario 1: what apply persists comes back at boot, and rollback + reboot is pristine.

Three boots of one disk: (1) pristine audit and /etc snapshot, then apply; (2) after the
reboot: audit, hosttune-boot.service, the daemons' live memlock, huge pages, hugetlbfs, swap;
then rollback; (3) after the reboot: audit and /etc equal the pristine ones."""

from __future__ import annotations

import json

import pytest

from tests.vm import checks
from tests.vm.conftest import VmEnv, stage_ok

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]


BOOT1 = checks.PRELUDE + """
swapon --show=NAME --noheadings > $o/swap-pristine
run audit-pristine.json hosttune audit -p inference --json
snap_etc etc-pristine.tar
run apply.json hosttune apply -p inference --yes --json
"""

BOOT2 = checks.PRELUDE + """
run audit-applied.json hosttune audit -p inference --json
systemctl show hosttune-boot.service -p ActiveState -p Result -p ExecMainStatus > $o/bootunit
journalctl -b -u hosttune-boot.service --no-pager > $o/bootunit.log 2>&1
for c in dockerd containerd; do
  p=$(pidof -s $c) && grep 'Max locked memory' /proc/$p/limits > $o/limits-$c
done
grep -E '^(HugePages_Total|Hugepagesize):' /proc/meminfo > $o/hugepages
grep ' hugetlbfs ' /proc/mounts > $o/hugetlbfs-mounts || true
swapon --show=NAME --noheadings > $o/swap-applied
getent group inference > $o/group || true
run rollback.json hosttune rollback --yes --json
"""

BOOT3 = checks.PRELUDE + """
run audit-final.json hosttune audit -p inference --json
snap_etc etc-final.tar
swapon --show=NAME --noheadings > $o/swap-final
"""



def test_apply_reboot_rollback_reboot(vm_env: VmEnv) -> None:
    tree = vm_env.tree("persist")
    tree.swapfile(checks.SWAP, 64)
    fstab = (tree.path / "etc/fstab").read_text()
    tree.write("/etc/fstab", fstab + f"{checks.SWAP} none swap sw 0 0\n")
    vm = vm_env.guest("persist", tree)

    r1 = vm.boot(BOOT1, label="pristine-apply")
    stage_ok(r1)
    assert r1.out["swap-pristine"].split() == [checks.SWAP], \
        "the swap file must be active at first"
    assert r1.out["apply.json.rc"].strip() in ("0", "1"), r1.out["apply.json.err"]
    applied = json.loads(r1.out["apply.json"])
    assert applied["changed"] and not [s for s in applied["steps"]
                                       if s["status"] != "applied"], applied

    r2 = vm.boot(BOOT2, label="applied-rollback")
    stage_ok(r2)
    rows = checks.audit_rows(r2.out["audit-applied.json"])
    assert checks.not_ok(rows) == [], "after apply + reboot every row is ok or unsupported"
    assert r2.out["audit-applied.json.rc"].strip() == "0"
    unit = dict(ln.split("=", 1) for ln in r2.out["bootunit"].split())
    assert unit == {"ActiveState": "active", "Result": "success", "ExecMainStatus": "0"}, \
        r2.out["bootunit.log"]
    for daemon in ("dockerd", "containerd"):
        assert r2.out[f"limits-{daemon}"].split()[3:5] == ["unlimited", "unlimited"], \
            r2.out[f"limits-{daemon}"]
    meminfo = dict(ln.split(":", 1) for ln in r2.out["hugepages"].splitlines())
    assert int(meminfo["HugePages_Total"]) > 0 and meminfo["Hugepagesize"].split()[0] == "2048"
    assert " /srv/hosttune/models hugetlbfs " in r2.out["hugetlbfs-mounts"]
    assert r2.out["swap-applied"].strip() == "", "swap stays off after the reboot"
    assert r2.out["group"].startswith("inference:")
    assert r2.out["rollback.json.rc"].strip() == "0", r2.out["rollback.json"]

    r3 = vm.boot(BOOT3, label="rolled-back")
    stage_ok(r3)
    assert r3.out["swap-final"].split() == [checks.SWAP]
    assert checks.comparable(checks.audit_rows(r3.out["audit-final.json"])) == \
        checks.comparable(checks.audit_rows(r1.out["audit-pristine.json"]))
    assert r1.out_dir and r3.out_dir
    assert checks.etc_differences(r1.out_dir / "etc-pristine.tar", r3.out_dir / "etc-final.tar",
                                  checks.ETC_EXCEPTIONS) == []
