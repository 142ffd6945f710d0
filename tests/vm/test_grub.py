"""Scenario 2: kernel parameters through a real GRUB. A partitioned disk, grub-pc installed in
its MBR gap by the guest itself in its first boot (straight into the kernel), which then
applies; every later boot is SeaBIOS -> GRUB (no -kernel). apply -> reboot: /proc/cmdline
carries the parameters and audit is ok; rollback -> reboot: they are gone and
/etc/default/grub and grub.cfg are back, byte for byte."""

from __future__ import annotations

import pytest

from tests.vm import checks
from tests.vm.conftest import VmEnv, stage_ok

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]

PROFILE = """name: grubtest
kernel_cmdline:
  params: [pcie_aspm=off]
  hugepages_1g: 1
"""
WORDS = ("pcie_aspm=off", "hugepagesz=1G", "hugepages=1")

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

BOOT1 = checks.PRELUDE + INSTALL + SNAP.format("pristine") + """
run audit-pristine.json hosttune audit -p ./p.yaml --json
run apply.json hosttune apply -p ./p.yaml --yes --json
"""

BOOT2 = checks.PRELUDE + SNAP.format("applied") + """
cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages > $o/1g-pages 2>&1 || true
run audit-applied.json hosttune audit -p ./p.yaml --json
run rollback.json hosttune rollback --yes --json
"""

BOOT3 = checks.PRELUDE + SNAP.format("final") + """
run audit-final.json hosttune audit -p ./p.yaml --json
"""


def test_kernel_cmdline_through_grub(vm_env: VmEnv) -> None:
    tree = vm_env.tree("grub")
    tree.write("/etc/default/grub", DEFAULT_GRUB)
    tree.write("/etc/fstab", "LABEL=htroot / ext4 rw,errors=remount-ro 0 1\n")
    vm = vm_env.guest("grub", tree, partitioned=True)

    # first boot straight into the kernel: the guest installs GRUB on its own disk (its
    # grub.cfg is the pristine one), audits and applies
    files = {"p.yaml": PROFILE}
    b1 = vm.boot(BOOT1, files=files, label="grub-install-apply")
    stage_ok(b1)
    assert not set(WORDS) & set(b1.out["cmdline-pristine"].split())
    vm.grub = True  # from now on SeaBIOS -> GRUB -> the kernel grub.cfg names
    assert b1.out["apply.json.rc"].strip() in ("0", "1"), b1.out["apply.json.err"]
    assert "update-grub" in b1.out["apply.json"]

    b2 = vm.boot(BOOT2, files=files, label="applied-rollback")
    stage_ok(b2)
    applied = b2.out["cmdline-applied"].split()
    assert applied[0].startswith("BOOT_IMAGE=/boot/vmlinuz-"), "booted by GRUB"
    assert set(WORDS) <= set(applied), applied
    # the kernel acted on them: one 1 GiB page reserved at boot (-cpu max has pdpe1gb)
    assert b2.out["1g-pages"].strip() == "1", b2.out["1g-pages"]
    rows = checks.audit_rows(b2.out["audit-applied.json"])
    assert checks.not_ok(rows) == [], "no 'needs reboot' after the reboot"
    assert b2.out["audit-applied.json.rc"].strip() == "0"
    assert b2.out["rollback.json.rc"].strip() == "0", b2.out["rollback.json"]

    b3 = vm.boot(BOOT3, files=files, label="rolled-back")
    stage_ok(b3)
    final = b3.out["cmdline-final"].split()
    assert final[0].startswith("BOOT_IMAGE=/boot/vmlinuz-"), "booted by GRUB"
    # GRUB's own command line again: the applied one without the profile's words
    assert final == [w for w in applied if w not in WORDS], (final, applied)
    for f in ("default-grub", "grub.cfg", "grub.d"):
        assert b3.out[f"{f}-final"] == b1.out[f"{f}-pristine"], f
    assert checks.comparable(checks.audit_rows(b3.out["audit-final.json"])) == \
        checks.comparable(checks.audit_rows(b1.out["audit-pristine.json"]))
