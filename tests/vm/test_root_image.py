"""Scenario 4: the image-builder workflow. `hosttune apply --root TREE` on the guest's rootfs
before it ever boots, then boot it: hosttune-boot.service runs the hosttune inside the image,
the memlock group exists, and audit is ok."""

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
    vm = vm_env.guest("image", tree)

    b = vm.boot(BOOT, label="first-boot")
    stage_ok(b)
    assert f"path={GUEST_VENV}/bin/hosttune " in b.out["execstart"]
    state = dict(ln.split("=", 1) for ln in b.out["bootunit"].split())
    assert state == {"ActiveState": "active", "Result": "success", "ExecMainStatus": "0"}, \
        b.out["bootunit.log"]
    assert b.out["group"].startswith("inference:")
    rows = checks.audit_rows(b.out["audit.json"])
    gaps = [r for r in checks.not_ok(rows) if (r["tunable"], r["key"]) in KNOWN_GAPS]
    assert checks.not_ok(rows) == gaps, "the image's first boot audits ok"
    # Not fixed yet (see docs/reliability.md): say so loudly if that changes
    assert [(r["tunable"], r["key"], r["status"]) for r in gaps] == \
        [(*k, "drift") for k in KNOWN_GAPS], "a known gap closed: remove it from KNOWN_GAPS"


# Settings an image cannot carry yet, and why. The hugetlbfs fstab line holds size=<bytes>,
# 40% of a RAM the image builder cannot know; hosttune-boot.service mounts it at every boot
# (the "mounted" row is ok), but the persistent line only comes with the first live apply.
KNOWN_GAPS = [("hugetlbfs", "/srv/hosttune/models fstab")]
