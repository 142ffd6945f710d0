"""Scenario 2: kernel parameters through a real GRUB, and a 1 GiB pool that falls back to them.

A partitioned disk, grub-pc installed in its MBR gap by the guest itself in its first boot
(straight into the kernel), which then applies; every later boot is SeaBIOS -> GRUB (no
-kernel). The profile asks for pcie_aspm=off and a `reserve: auto` pool of one 1 GiB page.
The first boot (QEMU's -kernel, its own command line) marks one 4 KiB page reserved in each
1 GiB block the kernel could give (memmap=4K$1.5G, memmap=4K$2.5G; the first block holds the
kernel): the runtime allocator skips any range with a reserved page (mm/page_alloc.c
pfn_range_valid_contig), so the runtime allocation falls short for real, without memory
pressure, as on a host whose unmovable pages are spread over every block. apply records the
fallback and writes hugepagesz=1G hugepages=1 through the kernel_cmdline family in the same
run. Later boots go through GRUB's command line, without memmap=.
apply -> reboot: /proc/cmdline carries the parameters, the kernel reserved the page at boot and
audit is ok ("boot reservation active"); rollback -> reboot: they are gone, the fallback
record too, and /etc/default/grub and grub.cfg are back, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.vm import checks
from tests.vm.conftest import VmEnv, stage_ok

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]

PROFILE = """name: grubtest
hugepages:
  pools:
    - {pagesize: 1G, size: 1, nodes: any, reserve: auto}
  min_free_ram: 512MiB
  thp: null
kernel_cmdline:
  params: [pcie_aspm=off]
"""
WORDS = ("pcie_aspm=off", "hugepagesz=1G", "hugepages=1")
GIG = "/sys/kernel/mm/hugepages/hugepages-1048576kB"

DEFAULT_GRUB = """GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0 panic=-1 init_on_alloc=0 loglevel=4 mitigations=off"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
"""

INSTALL = """
grub-install --target=i386-pc /dev/vda > $o/grub-install 2>&1 || exit 1
update-grub > $o/update-grub 2>&1 || exit 1
"""

SNAP = """
cat /proc/cmdline > $o/cmdline-{0}
cp /etc/default/grub $o/default-grub-{0}
cp /boot/grub/grub.cfg $o/grub.cfg-{0}
ls -A /etc/default/grub.d > $o/grub.d-{0} 2>/dev/null || true
"""

# one reserved page in each 1 GiB block above the first (a 3 GiB guest: [1G,2G) and [2G,3G))
RESERVED = "memmap=4K$0x60000000 memmap=4K$0xa0000000"

BOOT1 = checks.PRELUDE + INSTALL + SNAP.format("pristine") + f"""
run audit-pristine.json hosttune audit -p ./p.yaml --json
run apply.json hosttune apply -p ./p.yaml --yes --json
cat {GIG}/nr_hugepages > $o/1g-after-apply
cat /var/lib/hosttune/hugepages-boot.json > $o/fallback 2>&1 || true
run audit-applied.json hosttune audit -p ./p.yaml --json
"""

BOOT2 = checks.PRELUDE + SNAP.format("applied") + f"""
cat {GIG}/nr_hugepages > $o/1g-pages 2>&1 || true
run audit-applied.json hosttune audit -p ./p.yaml --json
run rollback.json hosttune rollback --yes --json
"""

BOOT3 = checks.PRELUDE + SNAP.format("final") + f"""
cat {GIG}/nr_hugepages > $o/1g-final
ls -A /var/lib/hosttune > $o/state-final 2>&1 || true
run audit-final.json hosttune audit -p ./p.yaml --json
"""


def _gig_row(text: str) -> dict[str, Any]:
    (row,) = [r for r in checks.audit_rows(text)
              if r["tunable"] == "hugepages" and r["key"].startswith("1G")]
    return row


def test_kernel_cmdline_through_grub(vm_env: VmEnv) -> None:
    tree = vm_env.tree("grub")
    tree.write("/etc/default/grub", DEFAULT_GRUB)
    tree.write("/etc/fstab", "LABEL=htroot / ext4 rw,errors=remount-ro 0 1\n")
    vm = vm_env.guest("grub", tree, partitioned=True, cmdline=RESERVED, mem_mb=3072)

    # first boot straight into the kernel: the guest installs GRUB on its own disk (its
    # grub.cfg is the pristine one), audits and applies
    files = {"p.yaml": PROFILE}
    b1 = vm.boot(BOOT1, files=files, label="grub-install-apply")
    stage_ok(b1)
    assert not set(WORDS) & set(b1.out["cmdline-pristine"].split())
    vm.grub = True  # from now on SeaBIOS -> GRUB -> the kernel grub.cfg names
    assert "reserve: auto" in _gig_row(b1.out["audit-pristine.json"])["note"]
    assert b1.out["apply.json.rc"].strip() in ("0", "1"), b1.out["apply.json.err"]
    assert "update-grub" in b1.out["apply.json"]
    # the runtime allocation fell short for real; apply kept what it got (nothing) and moved
    # the pool to the kernel command line in the same run
    got = int(b1.out["1g-after-apply"])
    assert set(RESERVED.split()) <= set(b1.out["cmdline-pristine"].split())
    assert got == 0, f"the kernel found 1 GiB at runtime despite {RESERVED}"
    ids = [st["id"] for st in json.loads(b1.out["apply.json"])["steps"]]
    assert ids[0] == "hugepages/1G" and "kernel_cmdline/bootloader" in ids, ids
    assert json.loads(b1.out["fallback"])["1G"]["got"] == got
    row = _gig_row(b1.out["audit-applied.json"])
    assert row["status"] == "needs reboot", row
    assert row["note"].startswith("boot reservation pending reboot"), row
    assert f"allocated {got} of 1 pages at runtime" in row["note"], row

    b2 = vm.boot(BOOT2, files=files, label="applied-rollback")
    stage_ok(b2)
    applied = b2.out["cmdline-applied"].split()
    assert applied[0].startswith("BOOT_IMAGE=/boot/vmlinuz-"), "booted by GRUB"
    assert set(WORDS) <= set(applied), applied
    # the kernel acted on them: one 1 GiB page reserved at boot (-cpu max has pdpe1gb)
    assert b2.out["1g-pages"].strip() == "1", b2.out["1g-pages"]
    rows = checks.audit_rows(b2.out["audit-applied.json"])
    assert checks.not_ok(rows) == [], "no 'needs reboot' after the reboot"
    assert _gig_row(b2.out["audit-applied.json"])["note"].startswith("boot reservation active")
    assert b2.out["audit-applied.json.rc"].strip() == "0"
    assert b2.out["rollback.json.rc"].strip() == "0", b2.out["rollback.json"]

    b3 = vm.boot(BOOT3, files=files, label="rolled-back")
    stage_ok(b3)
    final = b3.out["cmdline-final"].split()
    assert final[0].startswith("BOOT_IMAGE=/boot/vmlinuz-"), "booted by GRUB"
    # GRUB's own command line again: the applied one without the profile's words
    assert final == [w for w in applied if w not in WORDS], (final, applied)
    assert b3.out["1g-final"].strip() == "0"
    assert "hugepages-boot.json" not in b3.out["state-final"].split()
    for f in ("default-grub", "grub.cfg", "grub.d"):
        assert b3.out[f"{f}-final"] == b1.out[f"{f}-pristine"], f
    assert checks.comparable(checks.audit_rows(b3.out["audit-final.json"])) == \
        checks.comparable(checks.audit_rows(b1.out["audit-pristine.json"]))
