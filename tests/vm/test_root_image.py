"""Scenario 4: the image-builder workflow. `hosttune apply --root TREE` on the guest's rootfs
before it ever boots, then boot it: hosttune-boot.service runs the hosttune inside the image,
the memlock group exists, the hugetlbfs mount comes from the image's fstab line, and audit is
ok."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.vm import checks
from tests.vm.conftest import VmEnv, stage_ok
from tests.vm.guest import GUEST_VENV

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]

BOOT = checks.PRELUDE + """
systemctl show hosttune-boot.service -p ActiveState -p Result -p ExecMainStatus > $o/bootunit
systemctl show hosttune-boot.service -p ExecStart > $o/execstart
journalctl -b -u hosttune-boot.service --no-pager > $o/bootunit.log 2>&1
getent group inference > $o/group || true
systemctl show srv-hosttune-models.mount -p SourcePath -p ActiveState > $o/mountunit
findmnt -rn -o FSTYPE,OPTIONS /srv/hosttune/models > $o/findmnt || true
run audit.json hosttune audit -p inference --json
"""


def test_root_apply_then_first_boot(vm_env: VmEnv) -> None:
    tree = vm_env.tree("image")
    r = run_cli("apply", "--root", str(tree.path), "-p", "inference", "--yes", "--json",
                timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["changed"]
    unit = (tree.path / "etc/systemd/system/hosttune-boot.service").read_text()
    assert f"ExecStart={GUEST_VENV}/bin/hosttune apply --runtime-only " in unit
    assert "inference:x:" in (tree.path / "etc/group").read_text()
    # the image knows neither RAM nor huge page sizes: the mount is its pool, so no size=
    assert ("# hosttune: hugetlbfs /srv/hosttune/models\nhugetlbfs /srv/hosttune/models "
            "hugetlbfs pagesize=2M,mode=0750,uid=0,gid=0 0 0\n") in \
        (tree.path / "etc/fstab").read_text()
    vm = vm_env.guest("image", tree)

    b = vm.boot(BOOT, label="first-boot")
    stage_ok(b)
    assert f"path={GUEST_VENV}/bin/hosttune " in b.out["execstart"]
    state = dict(ln.split("=", 1) for ln in b.out["bootunit"].split())
    assert state == {"ActiveState": "active", "Result": "success", "ExecMainStatus": "0"}, \
        b.out["bootunit.log"]
    assert b.out["group"].startswith("inference:")
    # systemd mounted it from that line at local-fs, before hosttune-boot sized the pool
    mount = dict(ln.split("=", 1) for ln in b.out["mountunit"].split())
    assert mount == {"SourcePath": "/etc/fstab", "ActiveState": "active"}, b.out["mountunit"]
    fstype, opts = b.out["findmnt"].split()
    assert fstype == "hugetlbfs" and not [o for o in opts.split(",") if o.startswith("size=")]
    rows = checks.audit_rows(b.out["audit.json"])
    assert checks.not_ok(rows) == [], "the image's first boot audits ok"
