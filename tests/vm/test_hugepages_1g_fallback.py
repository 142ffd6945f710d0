"""Scenario: a `reserve: auto` 1G pool the running kernel cannot allocate, through a real GRUB.

The guest (3 GiB) fragments its memory on purpose first: ~100k files on tmpfs put inode and
dentry slabs (unmovable) into pageblocks all over memory, so no 1 GiB-aligned block is free or
movable and the runtime allocation of 2 x 1 GiB falls short for real (the write succeeds,
nr_hugepages reads back less). apply keeps what it got, records the fallback and writes the
kernel_cmdline drop-in + update-grub in the same run; audit says "boot reservation pending
reboot". After a reboot through GRUB the kernel reserves both pages at boot and audit says
"boot reservation active"; rollback -> reboot: the parameters, the drop-in and the fallback
record are gone and the pool is a runtime pool again."""

from __future__ import annotations

import json

import pytest

from tests.vm import checks
from tests.vm.conftest import VmEnv, stage_ok
from tests.vm.test_grub import DEFAULT_GRUB, INSTALL

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]

PROFILE = """name: gig
hugepages:
  pools:
    - {pagesize: 1G, size: 2, nodes: any}
  min_free_ram: 512MiB
  thp: null
kernel_cmdline: {}
"""
WORDS = ["hugepagesz=1G", "hugepages=2"]
GIG = "/sys/kernel/mm/hugepages/hugepages-1048576kB"

BOOT1 = checks.PRELUDE + f"""
cat /proc/cmdline > $o/cmdline-pristine
mkdir -p /dev/shm/frag && (cd /dev/shm/frag && seq 100000 | xargs touch)
grep -E 'Slab|MemFree' /proc/meminfo > $o/meminfo
run audit-pristine.json hosttune audit -p ./p.yaml --json
run apply.json hosttune apply -p ./p.yaml --yes --json
cat {GIG}/nr_hugepages > $o/1g-after-apply
cat /var/lib/hosttune/hugepages-boot.json > $o/fallback 2>&1 || true
cat /etc/default/grub.d/90-hosttune.cfg > $o/drop-in 2>&1 || true
run audit-applied.json hosttune audit -p ./p.yaml --json
"""

BOOT2 = checks.PRELUDE + f"""
cat /proc/cmdline > $o/cmdline-booted
cat {GIG}/nr_hugepages > $o/1g-booted
run audit-booted.json hosttune audit -p ./p.yaml --json
run rollback.json hosttune rollback --yes --json
"""

BOOT3 = checks.PRELUDE + f"""
cat /proc/cmdline > $o/cmdline-final
cat {GIG}/nr_hugepages > $o/1g-final
ls /var/lib/hosttune > $o/state-final 2>&1 || true
ls -A /etc/default/grub.d > $o/grub.d-final 2>&1 || true
run audit-final.json hosttune audit -p ./p.yaml --json
"""


def _gig_row(text: str) -> dict[str, str]:
    (row,) = [r for r in checks.audit_rows(text)
              if r["tunable"] == "hugepages" and r["key"].startswith("1G")]
    return row


def test_1g_pool_falls_back_to_a_boot_reservation(vm_env: VmEnv) -> None:
    tree = vm_env.tree("gig")
    tree.write("/etc/default/grub", DEFAULT_GRUB)
    tree.write("/etc/fstab", "LABEL=htroot / ext4 rw,errors=remount-ro 0 1\n")
    vm = vm_env.guest("gig", tree, partitioned=True)
    stage_ok(vm.boot(INSTALL, label="grub-install"))
    vm.grub = True
    files = {"p.yaml": PROFILE}

    b1 = vm.boot(BOOT1, files=files, label="fragmented-apply")
    stage_ok(b1)
    pristine = b1.out["cmdline-pristine"].split()
    assert pristine[0].startswith("BOOT_IMAGE=/boot/vmlinuz-") and not set(WORDS) & set(pristine)
    row = _gig_row(b1.out["audit-pristine.json"])
    assert row["key"] == "1G total" and "reserve: auto" in row["note"], row
    assert b1.out["apply.json.rc"].strip() in ("0", "1"), b1.out["apply.json.err"]
    got = int(b1.out["1g-after-apply"])
    assert got < 2, f"the kernel allocated {got} of 2 1G pages at runtime: nothing to fall " \
        f"back from ({b1.out['meminfo']})"
    ids = [s["id"] for s in json.loads(b1.out["apply.json"])["steps"]]
    assert ids[0] == "hugepages/1G" and "kernel_cmdline/bootloader" in ids, ids
    assert json.loads(b1.out["fallback"])["1G"]["got"] == got
    assert "hugepagesz=1G hugepages=2" in b1.out["drop-in"]
    row = _gig_row(b1.out["audit-applied.json"])
    assert row["status"] == "needs reboot", row
    assert row["note"].startswith("boot reservation pending reboot"), row
    assert f"allocated {got} of 2 pages at runtime" in row["note"]

    b2 = vm.boot(BOOT2, files=files, label="reserved-at-boot")
    stage_ok(b2)
    assert WORDS == [w for w in b2.out["cmdline-booted"].split() if w in WORDS]
    assert b2.out["1g-booted"].strip() == "2"  # the kernel reserved them at boot
    row = _gig_row(b2.out["audit-booted.json"])
    assert row["status"] == "ok" and row["note"].startswith("boot reservation active"), row
    assert b2.out["rollback.json.rc"].strip() == "0", b2.out["rollback.json"]

    b3 = vm.boot(BOOT3, files=files, label="rolled-back")
    stage_ok(b3)
    assert b3.out["cmdline-final"].split() == pristine
    assert "hugepages-boot.json" not in b3.out["state-final"]
    assert "90-hosttune.cfg" not in b3.out["grub.d-final"]
    row = _gig_row(b3.out["audit-final.json"])
    assert row["key"] == "1G total" and "reserve: auto" in row["note"], row
