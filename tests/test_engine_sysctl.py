"""End-to-end over a fake tree with the sysctl family (the reference tunable)."""

from __future__ import annotations

import json
from pathlib import Path

from hosttune import engine
from hosttune.engine import AuditReport
from hosttune.host import Host
from hosttune.profile import load_profile
from hosttune.tunables.base import Status
from tests.conftest import run_cli
from tests.helpers import snapshot


def test_sysctl_apply_idempotent_and_rollback_exact(ryzen, cli):
    before = snapshot(ryzen)
    r = cli("apply", "--root", str(ryzen), "--yes", "--only", "sysctl", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["changed"]
    assert (ryzen / "proc/sys/vm/swappiness").read_text() == "0\n"
    conf = (ryzen / "etc/sysctl.d/90-hosttune.conf").read_text()
    assert "vm.swappiness = 0" in conf
    r = cli("apply", "--root", str(ryzen), "--yes", "--only", "sysctl", "--json")
    assert json.loads(r.output)["changed"] is False
    r = cli("audit", "--root", str(ryzen), "--only", "sysctl")
    assert r.exit_code == 0, r.output
    r = cli("rollback", "--root", str(ryzen), "--yes")
    assert r.exit_code == 0, r.output
    assert snapshot(ryzen) == before


def _audit(root: Path) -> AuditReport:
    """What `hosttune audit --root ROOT --only sysctl` reports (the default profile)."""
    return engine.audit(Host(root), load_profile("inference"), only={"sysctl"})


def test_sysctl_conflict_in_sysctl_conf_is_reported(ryzen):
    (ryzen / "etc/sysctl.conf").write_text("vm.swappiness = 10\n")
    (ryzen / "proc/sys/vm/swappiness").write_text("0\n")
    rep = _audit(ryzen)
    rows = {r.key: r for r in rep.rows}
    assert rows["vm.swappiness"].status == Status.CONFLICT
    assert "/etc/sysctl.conf:1" in rows["vm.swappiness"].note
    assert rows["vm.swappiness"] in rep.drift  # a conflict is drift (audit exits 1)


def test_trailing_comment_after_the_same_number_is_no_conflict(ryzen):
    # the kernel reads "0   # off" as 0 (integer sysctls ignore what follows the number)
    (ryzen / "etc/sysctl.conf").write_text("vm.swappiness = 0   # off\n")
    (ryzen / "proc/sys/vm/swappiness").write_text("0\n")
    rows = {r.key: r for r in _audit(ryzen).rows}
    assert rows["vm.swappiness"].status == Status.OK, rows["vm.swappiness"]
    (ryzen / "etc/sysctl.conf").write_text("vm.swappiness = 10   # off\n")
    rows = {r.key: r for r in _audit(ryzen).rows}
    assert rows["vm.swappiness"].status == Status.CONFLICT


def test_floor_respects_higher_distro_default(ryzen):
    (ryzen / "usr/lib/sysctl.d").mkdir(parents=True)
    (ryzen / "usr/lib/sysctl.d/50-default.conf").write_text("vm.max_map_count = 1048576\n")
    (ryzen / "proc/sys/vm/max_map_count").write_text("1048576\n")
    p = engine.plan(Host(ryzen), load_profile("inference"), only={"sysctl"})
    rows = {r.key: r for r in p.audit.rows}
    assert rows["vm.max_map_count"].status == Status.OK
    (conf,) = [c for c in p.changes if c.kind == "file"]
    assert conf.value is not None and "vm.max_map_count = 262144" not in conf.value
    assert not any(c.id == "sysctl/vm.max_map_count" for c in p.changes)


def test_kernel_change_of_bracketed_file_reverts_to_the_selected_choice(tmp_path):
    from hosttune.engine.core import capture, do_revert
    from hosttune.host import Host
    from hosttune.tunables.base import Change

    f = tmp_path / "sys/kernel/mm/transparent_hugepage/enabled"
    f.parent.mkdir(parents=True)
    f.write_text("always [madvise] never\n")
    h = Host(tmp_path)
    ch = Change(id="x/thp", tunable="x", kind="kernel", summary="thp",
                path="/sys/kernel/mm/transparent_hugepage/enabled", value="never", runtime=True)
    orig = capture(h, ch)
    assert orig == {"value": "madvise"}  # the kernel rejects the whole bracketed text
    do_revert(h, ch, orig)
    assert f.read_text() == "madvise\n"


def test_plan_text_groups_by_family_with_whole_diffs(cli, ryzen):
    r = cli("plan", "--root", str(ryzen))
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("hosttune plan · ")
    assert "sysctl" in lines and "memlock" in lines  # family headings, in apply order
    assert lines.index("sysctl") < lines.index("memlock")
    # each diff follows its change, lines whole (never cropped to the terminal)
    assert any(ln.strip() == "+# Managed by hosttune - changes here are overwritten by "
               "`hosttune apply`." for ln in lines)
    assert any("runtime" in ln and "vm.swappiness" in ln for ln in lines)


def test_only_with_an_unknown_family_is_a_usage_error(cli, ryzen):
    """A typo in --only must not read as 'nothing to check' (exit 0) or an empty apply."""
    before = snapshot(ryzen)
    for cmd in (["audit"], ["plan"], ["apply", "--yes"]):
        r = cli(*cmd, "--root", str(ryzen), "--only", "sysctl", "--only", "sysctls")
        assert r.exit_code == 2, (cmd, r.output)
        assert "--only sysctls: no such family" in r.output and "sysctl, memlock" in r.output
    p = run_cli("audit", "--root", str(ryzen), "--only", "swapp", "--json")
    assert p.returncode == 2 and "no such family" in p.stderr and p.stdout == ""
    assert snapshot(ryzen) == before


def test_the_drop_in_comes_after_every_live_value(ryzen):
    """Once the drop-in is on disk the next boot applies it; a power cut right after it must
    find every live original in the journal already (seen on a real boot: rollback kept the
    tuned values a boot had read from the file it removed)."""
    p = engine.plan(Host(ryzen), load_profile("inference"), only={"sysctl"})
    kinds = [c.kind for c in p.changes]
    assert kinds.count("file") == 1 and kinds.count("kernel") >= 1
    assert kinds[-1] == "file", kinds
