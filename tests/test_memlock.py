"""memlock tunable: limits.d + LimitMEMLOCK drop-ins, the daemons' real limits, and
systemd-analyze verify of every drop-in hosttune writes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hosttune import engine
from hosttune.errors import ProfileError
from hosttune.host import Host
from hosttune.host.facts import find_pids
from hosttune.host.parsers import parse_limits
from hosttune.profile import load_profile
from hosttune.profile.schema import MemlockSection
from hosttune.tunables.base import Status
from hosttune.tunables.memlock import (
    DROPIN_NAME,
    has_cap,
    limits_dropin,
    memlock_settings,
    unit_dropin,
)
from tests.conftest import need
from tests.dockerd import ensure_dockerd
from tests.fakehost import limits_text
from tests.helpers import NonRootHost, snapshot

MiB = 1024 * 1024
LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max locked memory         8388608              8388608              bytes     
Max locked memory2        unlimited            65536                bytes     
Max realtime timeout      unlimited            unlimited            us        
"""  # noqa: W291 - the kernel pads columns with spaces


def _profile(tmp: Path, body: str):
    p = tmp / "p.yaml"
    p.write_text(f"name: t\nmemlock: {body}\n")
    return load_profile(str(p))


def _rows(tree: Path, loaded=None, host: Host | None = None):
    rep = engine.audit(host or Host(tree), loaded or load_profile("inference"),
                       only={"memlock"})
    return {r.key: r for r in rep.rows}


def test_parse_limits_literal():
    lim = parse_limits(LIMITS)
    assert lim["Max locked memory"] == (8 * MiB, 8 * MiB)
    assert lim["Max locked memory2"] == (None, 65536)


def test_has_cap():
    assert has_cap("CapBnd:\t000001fffeffffff\n", 24) is False  # this VM: no CAP_SYS_RESOURCE
    assert has_cap("CapBnd:\t000001ffffffffff\n", 24) is True
    assert has_cap("Name:\tx\n", 24) is None


def test_limits_dropin_scopes_and_units():
    group = limits_dropin(MemlockSection(), None, "p")
    assert "@inference\tsoft\tmemlock\tunlimited\n" in group
    assert "@inference\thard\tmemlock\tunlimited\n" in group
    assert "*" not in group.replace("# ", "")
    every = limits_dropin(MemlockSection(scope="everyone", limit="64GiB"), 64 * 1024**3, "p")
    assert "*\thard\tmemlock\t67108864\n" in every  # KiB
    assert "does not cover root" in every


def test_unit_dropin_values():
    assert "[Service]\nLimitMEMLOCK=infinity\n" in unit_dropin(None, "p")
    assert "LimitMEMLOCK=68719476736\n" in unit_dropin(64 * 1024**3, "p")


def test_ryzen_audit_reports_daemon_limits(ryzen):
    rows = _rows(ryzen)
    d = rows["dockerd running limit"]
    assert d.status == Status.DRIFT
    assert d.current.startswith("8 MiB / hard 8 MiB (pid 1200)")
    assert "error setting rlimit type 8" in d.note
    assert d.needs == ("restart docker.service",)
    assert rows["containerd running limit"].status == Status.DRIFT
    assert rows["group inference"].status == Status.OK
    assert rows["docker.service drop-in"].status == Status.DRIFT


def test_ryzen_apply_then_needs_restart_then_rollback(ryzen):
    before = snapshot(ryzen)
    p = engine.plan(Host(ryzen), load_profile("inference"), only={"memlock"})
    assert "restart docker.service" in p.needs and "restart containerd.service" in p.needs
    rep = engine.apply(Host(ryzen), load_profile("inference"), only={"memlock"})
    assert rep.ok, rep.error
    dropin = ryzen / "etc/systemd/system/docker.service.d" / DROPIN_NAME
    assert "LimitMEMLOCK=infinity" in dropin.read_text()
    lim = (ryzen / "etc/security/limits.d/90-hosttune-memlock.conf").read_text()
    assert "@inference\thard\tmemlock\tunlimited" in lim
    rows = _rows(ryzen)
    # configured, but the running daemon still has 8 MiB: restart needed (not drift)
    assert rows["dockerd running limit"].status == Status.NEEDS_RESTART
    assert rows["dockerd running limit"].needs == ("restart docker.service",)
    # after the restart the daemon has the limit
    (ryzen / "proc/1200/limits").write_text(limits_text(None, None))
    assert _rows(ryzen)["dockerd running limit"].status == Status.OK
    (ryzen / "proc/1200/limits").write_text(limits_text(8 * MiB, 8 * MiB))
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == before


def test_daemon_reload_when_systemd_runs(ryzen):
    (ryzen / "run/systemd/system").mkdir(parents=True)
    host = Host(ryzen)
    p = engine.plan(host, load_profile("inference"), only={"memlock"})
    last = p.changes[-1]
    assert last.kind == "command" and last.params["post"] is True
    assert last.params["argv"] == ["systemctl", "daemon-reload"]
    rep = engine.apply(host, load_profile("inference"), only={"memlock"})
    assert rep.ok
    assert ("systemctl", "daemon-reload") in rep.skipped_commands
    assert host.runner.ran == []
    # nothing changed: no reload either
    assert engine.plan(Host(ryzen), load_profile("inference"), only={"memlock"}).changes == []


def test_missing_group_is_created_by_groupadd(ryzen, tmp_path):
    (ryzen / "etc/group").write_text("root:x:0:\n")
    rows = _rows(ryzen)
    assert rows["group inference"].status == Status.DRIFT
    # in a tree: systemd-sysusers --root (confined: it runs under --root)
    p = engine.plan(Host(ryzen), load_profile("inference"), only={"memlock"})
    (g,) = [c for c in p.changes if c.id == "memlock/group:inference"]
    assert g.params["argv"] == ["systemd-sysusers", f"--root={ryzen}",
                                f"{ryzen}/etc/sysusers.d/90-hosttune-memlock.conf"]
    assert g.params["revert_argv"] == ["groupdel", "--prefix", str(ryzen), "inference"]
    assert g.params["confined"] is True
    # live: groupadd --system, never confined to anything
    live = Host(ryzen)
    live.offline = False
    p = engine.plan(live, load_profile("inference"), only={"memlock"})
    (g,) = [c for c in p.changes if c.id == "memlock/group:inference"]
    assert g.params["argv"] == ["groupadd", "--system", "inference"]
    assert g.params["revert_argv"] == ["groupdel", "inference"]
    assert not g.params.get("confined")
    assert not any(c.path and "sysusers.d" in c.path for c in p.changes)
    # scope everyone: no group needed
    p = engine.plan(Host(ryzen), _profile(tmp_path, "{scope: everyone}"), only={"memlock"})
    assert not any(c.kind == "command" for c in p.changes)
    (f,) = [c for c in p.changes if c.path and c.path.endswith("limits.d/90-hosttune-memlock.conf")]
    assert "*\tsoft\tmemlock\tunlimited" in (f.value or "")


def test_later_dropin_overriding_limit_is_a_conflict(ryzen):
    engine.apply(Host(ryzen), load_profile("inference"), only={"memlock"})
    d = ryzen / "etc/systemd/system/docker.service.d"
    (d / "99-local.conf").write_text("[Service]\nLimitMEMLOCK=8M\n")
    rows = _rows(ryzen)
    assert rows["docker.service drop-in"].status == Status.CONFLICT
    assert "99-local.conf sets LimitMEMLOCK=8M" in rows["docker.service drop-in"].note
    # a restart would not help: the daemon row says drift, not needs-restart
    assert rows["dockerd running limit"].status == Status.DRIFT
    # the same value later is fine
    (d / "99-local.conf").write_text("[Service]\nLimitMEMLOCK=infinity\n")
    assert _rows(ryzen)["docker.service drop-in"].status == Status.OK


def test_memlock_settings_order(ryzen):
    sysd = ryzen / "etc/systemd/system"
    (ryzen / "lib/systemd/system/docker.service.d").mkdir(parents=True)
    (ryzen / "lib/systemd/system/docker.service").write_text("[Service]\nLimitMEMLOCK=64K\n")
    (ryzen / "lib/systemd/system/docker.service.d/95-vendor.conf").write_text(
        "[Service]\nLimitMEMLOCK=1M\n")
    (sysd / "docker.service.d").mkdir()
    (sysd / "docker.service.d/10-a.conf").write_text("[Service]\nLimitMEMLOCK=2M\n")
    got = [(s.file.rsplit("/", 1)[-1], s.value) for s in memlock_settings(Host(ryzen),
                                                                           "docker.service")]
    assert got == [("docker.service", "64K"), ("10-a.conf", "2M"), ("95-vendor.conf", "1M")]


def test_daemon_already_unlimited_is_ok(epyc):
    b_limits = limits_text(None, None)
    (epyc / "proc/900").mkdir(parents=True)
    (epyc / "proc/900/comm").write_text("dockerd\n")
    (epyc / "proc/900/limits").write_text(b_limits)
    assert find_pids(Host(epyc), "dockerd") == [900]
    assert _rows(epyc)["dockerd running limit"].status == Status.OK


def test_host_without_cap_sys_resource_is_unsupported(ryzen):
    """This VM: hard memlock stuck at 8 MiB, CAP_SYS_RESOURCE not in the bounding set. A unit
    asking for more would fail to start, so no drop-in is written."""
    (ryzen / "proc/1/status").write_text("Name:\tinit\nCapBnd:\t000001fffeffffff\n")
    host = Host(ryzen)
    host.offline = False  # judge the tree as if it were live (the runner stays offline)
    rows = _rows(ryzen, host=host)
    r = rows["docker.service LimitMEMLOCK"]
    assert r.status == Status.UNSUPPORTED and "CAP_SYS_RESOURCE" in r.note
    p = engine.plan(host, load_profile("inference"), only={"memlock"})
    assert not any("systemd" in (c.path or "") for c in p.changes)


def test_bad_service_name_names_the_key(tmp_path, ryzen):
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(ryzen), _profile(tmp_path, "{services: ['docker']}"),
                    only={"memlock"})
    assert "memlock.services[0]" in str(ei.value)


def test_contract_with_limit_in_bytes(any_tree, tmp_path):
    loaded = _profile(tmp_path, "{limit: 64GiB, scope: everyone}")
    before = snapshot(any_tree)
    assert engine.apply(Host(any_tree), loaded, only={"memlock"}).ok
    assert not engine.audit(Host(any_tree), loaded, only={"memlock"}).drift
    assert engine.apply(Host(any_tree), loaded, only={"memlock"}).steps == []
    assert engine.rollback(Host(any_tree)).ok
    assert snapshot(any_tree) == before


# --- systemd-analyze verify --------------------------------------------------------------------
def verify_dropin(tmp: Path, service: str, text: str) -> subprocess.CompletedProcess[str]:
    """Attach a drop-in to a minimal unit in a private unit dir and let systemd parse both."""
    unit_dir = tmp / "units"
    (unit_dir / f"{service}.d").mkdir(parents=True, exist_ok=True)
    (unit_dir / service).write_text("[Unit]\nDescription=stand-in\n\n[Service]\n"
                                    "ExecStart=/bin/true\n")
    (unit_dir / f"{service}.d" / DROPIN_NAME).write_text(text)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_LEVEL": "notice"}
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_dir / service)],
                          capture_output=True, text=True, env=env, check=False)


def _complaints(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in (r.stdout + r.stderr).splitlines() if DROPIN_NAME in ln]


@pytest.mark.parametrize("limit", [None, 64 * 1024**3])
def test_generated_dropins_pass_systemd_analyze_verify(tmp_path, limit):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze not installed")
    r = verify_dropin(tmp_path, "docker.service", unit_dropin(limit, "inference"))
    assert r.returncode == 0 and not _complaints(r), r.stdout + r.stderr
    # the same check flags a broken drop-in: the parse really happens
    bad = verify_dropin(tmp_path, "docker.service", "[Service]\nLimitMEMLOCK=lots\n")
    assert _complaints(bad), bad.stdout + bad.stderr


def test_written_dropins_verify(ryzen, tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze not installed")
    engine.apply(Host(ryzen), load_profile("inference"), only={"memlock"})
    for svc in ("docker.service", "containerd.service"):
        text = (ryzen / f"etc/systemd/system/{svc}.d" / DROPIN_NAME).read_text()
        r = verify_dropin(tmp_path / svc, svc, text)
        assert r.returncode == 0 and not _complaints(r), r.stdout + r.stderr


# --- live ---------------------------------------------------------------------------------------
def test_live_audit_reads_dockerd_limits():
    why = ensure_dockerd()
    need(why is None, why or "")
    host = Host("/")
    pids = find_pids(host, "dockerd")
    need(bool(pids), "needs a running dockerd")
    rows = _rows(Path("/"), host=host)
    r = rows["dockerd running limit"]
    real = parse_limits(Path(f"/proc/{pids[0]}/limits").read_text())["Max locked memory"]
    if real[1] is not None:
        assert r.status in (Status.DRIFT, Status.NEEDS_RESTART, Status.UNSUPPORTED)
        assert f"(pid {pids[0]})" in r.current



def test_non_root_unreadable_limits_is_needs_root(ryzen):
    host = NonRootHost(ryzen)
    host.deny = ("/proc/1200/limits", "/etc/group")
    rows = _rows(ryzen, host=host)
    assert rows["dockerd running limit"].status == Status.NEEDS_ROOT
    assert rows["group inference"].status == Status.NEEDS_ROOT
    assert rows["containerd running limit"].status == Status.DRIFT


def test_hidepid_is_needs_root_not_not_running(epyc):
    mi = epyc / "proc/self/mountinfo"
    mi.write_text(mi.read_text().replace(
        "/proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw",
        "/proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw,hidepid=invisible"))
    rows = _rows(epyc, host=NonRootHost(epyc))
    assert rows["dockerd running limit"].status == Status.NEEDS_ROOT
    assert "hidepid" in rows["dockerd running limit"].note
    assert _rows(epyc)["dockerd running limit"].current == "not running"  # root sees all


def test_daemon_json_default_ulimit_above_daemon_limit(ryzen):
    (ryzen / "etc/docker").mkdir()
    (ryzen / "etc/docker/daemon.json").write_text(
        '{"default-ulimits": {"memlock": {"Name": "memlock", "Soft": -1, "Hard": -1}}}')
    r = _rows(ryzen)["dockerd running limit"]
    assert "default-ulimits memlock hard unlimited is above the daemon's hard limit" in r.note
    (ryzen / "etc/docker/daemon.json").write_text(
        '{"default-ulimits": {"memlock": {"Name": "memlock", "Soft": 65536, "Hard": 65536}}}')
    r = _rows(ryzen)["dockerd running limit"]
    assert "hard 64 KiB" in r.note and "every container" not in r.note


def test_parse_limits_conf_literal():
    from hosttune.tunables.memlock import parse_limits_conf

    text = ("# /etc/security/limits.conf\n#*  soft core 0\n"
            "*               soft    memlock         unlimited\n"
            "@audio   -  rtprio  95   # realtime audio\n"
            "broken line\n")
    got = [(e.lineno, e.domain, e.type, e.item, e.value) for e in parse_limits_conf(text)]
    assert got == [(3, "*", "soft", "memlock", "unlimited"), (4, "@audio", "-", "rtprio", "95")]


def test_doctor_and_memlock_read_limits_the_same_way(ryzen):
    """One limits.conf reading for the family and doctor: the files pam_limits reads in its
    order (limits.conf, then limits.d/*.conf sorted; other names ignored), and the same lines
    from each, with the file they came from."""
    from hosttune.doctor.base import DoctorContext
    from hosttune.doctor.checks_config import all_limit_lines
    from hosttune.tunables.memlock import limits_conf_bytes, limits_files, parse_limits_conf

    d = ryzen / "etc/security/limits.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / "20-b.conf").write_text("@b hard memlock 64 # trailing comment\n")
    (d / "10-a.conf").write_text("@a - memlock unlimited\nnot four fields\n")
    (d / "05-x.conf.disabled").write_text("@x hard memlock 1\n")
    host = Host(ryzen)
    files = limits_files(host)
    assert files[0] == "/etc/security/limits.conf"
    assert files[1:] == ["/etc/security/limits.d/10-a.conf", "/etc/security/limits.d/20-b.conf"]
    mine = [e for f in files for e in parse_limits_conf(host.read_text(f) or "", f)]
    assert all_limit_lines(DoctorContext(host)) == mine
    tail = [(e.file.rsplit("/", 1)[1], e.lineno, e.domain, e.type, e.value) for e in mine[-2:]]
    assert tail == [("10-a.conf", 1, "@a", "-", "unlimited"), ("20-b.conf", 1, "@b", "hard", "64")]
    assert [limits_conf_bytes(v) for v in ("64", "-1", "unlimited", "infinity")] == \
        [64 * 1024, None, None, None]


def test_seed_wildcard_memlock_in_limits_conf_is_flagged(ryzen):
    """The seed notes appended '* soft/hard memlock unlimited' to limits.conf."""
    conf = ryzen / "etc/security/limits.conf"
    conf.write_text(conf.read_text() + "* soft memlock unlimited\n* hard memlock unlimited\n")
    rows = _rows(ryzen)
    flagged = [r for r in rows.values() if r.key.startswith("limits /etc/security/limits.conf")]
    assert [r.status for r in flagged] == [Status.CONFLICT, Status.CONFLICT]
    assert "@inference" in flagged[0].note
    # scope: everyone means it was asked for
    p = ryzen.parent / "p.yaml"
    p.write_text("name: t\nmemlock: {scope: everyone}\n")
    rows = _rows(ryzen, load_profile(str(p)))
    assert not any(r.key.startswith("limits /etc") for r in rows.values())


def test_root_apply_on_a_fresh_tree_creates_the_group_in_the_tree(ryzen):
    """Before: groupadd was skipped under --root, verify failed (exit 1) and the tree kept a
    limits.d rule for a group it lacked. Now a sysusers.d line declares it and
    systemd-sysusers --root creates it inside the tree; rollback's groupdel --prefix undoes it."""
    need(shutil.which("systemd-sysusers") is not None and shutil.which("groupdel") is not None,
         "systemd-sysusers and groupdel (systemd, passwd)")
    need(os.geteuid() == 0, "systemd-sysusers writes /etc/group as root")
    (ryzen / "etc/group").write_text("root:x:0:\ndocker:x:998:\n")
    (ryzen / "etc/gshadow").write_text("root:*::\ndocker:!::\n")
    (ryzen / "etc/gshadow").chmod(0o640)
    before = snapshot(ryzen)
    host = Host(ryzen)
    rep = engine.apply(host, load_profile("inference"))
    assert rep.ok, rep.error
    assert host.runner.ran and host.runner.ran[0][0] == "systemd-sysusers"
    assert all(a[0] in ("systemd-sysusers",) for a in host.runner.ran)  # nothing else ran
    assert "inference:x:" in (ryzen / "etc/group").read_text()
    assert "g inference -\n" in (ryzen / "etc/sysusers.d/90-hosttune-memlock.conf").read_text()
    assert _rows(ryzen)["group inference"].status == Status.OK
    drift = engine.audit(Host(ryzen), load_profile("inference"), only={"memlock"}).drift
    assert drift == [], drift
    assert engine.rollback(Host(ryzen)).ok
    after = snapshot(ryzen)
    # shadow's backups and lock file: written by the tools, byte-exact originals restored
    extra = {k for k in set(after) - set(before)}
    assert extra <= {"etc/group-", "etc/gshadow-", "etc/.pwd.lock"}, extra
    assert {k: v for k, v in after.items() if k not in extra} == before


def test_rollback_names_daemons_that_still_carry_the_tuned_limit(ryzen):
    from hosttune.tunables.memlock import MemlockTunable

    p = engine.plan(Host(ryzen), load_profile("inference"), only={"memlock"})
    dropins = [c for c in p.changes if c.path and c.path.endswith("/90-hosttune-memlock.conf")
               and ".service.d/" in c.path]
    assert len(dropins) == 2
    live = Host(ryzen)
    live.offline = False
    pids = find_pids(live, "dockerd")
    assert pids
    (ryzen / f"proc/{pids[0]}/limits").write_text(limits_text(None, None))
    notes = MemlockTunable().still_running(live, dropins)
    assert notes == [f"dockerd (pid {pids[0]}) still runs with the tuned memlock limit "
                     "unlimited until docker.service restarts"]
    # restarted with systemd's default: nothing to say
    (ryzen / f"proc/{pids[0]}/limits").write_text(limits_text(8 * MiB, 8 * MiB))
    assert MemlockTunable().still_running(live, dropins) == []
    assert MemlockTunable().still_running(Host(ryzen), dropins) == []  # a tree runs nothing


def test_group_revert_is_a_no_op_when_the_group_is_already_gone(ryzen):
    """Seen on a real power cut during rollback: groupdel had run, the journal still listed
    the step, and the next rollback failed on 'groupdel: group inference does not exist'."""
    need(shutil.which("systemd-sysusers") is not None and shutil.which("groupdel") is not None,
         "systemd-sysusers and groupdel (systemd, passwd)")
    need(os.geteuid() == 0, "systemd-sysusers writes /etc/group as root")
    (ryzen / "etc/group").write_text("root:x:0:\ndocker:x:998:\n")
    before = snapshot(ryzen)
    assert engine.apply(Host(ryzen), load_profile("inference"), only={"memlock"}).ok
    subprocess.run(["groupdel", "--prefix", str(ryzen), "inference"], check=True)
    rep = engine.rollback(Host(ryzen))
    assert rep.ok, [(s.change.id, s.error) for s in rep.steps if s.error]
    after = snapshot(ryzen)
    assert {k: v for k, v in after.items() if k not in set(after) - set(before)} == before
