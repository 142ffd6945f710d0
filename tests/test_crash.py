"""Crash safety: apply killed with SIGKILL at every step (before and after each change), then
rollback - or the next apply - finds a consistent state and loses no original."""

from __future__ import annotations

import json
import signal

import pytest

from hosttune import engine
from hosttune.host import Host
from hosttune.profile import load_profile
from tests.conftest import run_cli
from tests.helpers import snapshot


def _steps(tree, profile):
    """The number of steps an apply of ``profile`` takes on ``tree``."""
    return len(engine.plan(Host(tree), load_profile(profile)).changes)


# two CLI runs per step (~40 steps): ~3 min alone, past the suite's 300 s limit when CI's
# guests share the two cores
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("when", ["before", "after"])
def test_kill9_at_every_step_then_rollback_restores_tree(ryzen, when):
    profile = "ryzen9950x-rtx5090"
    n = _steps(ryzen, profile)
    assert n > 3
    original = snapshot(ryzen)
    for i in range(n):
        p = run_cli("apply", "--root", str(ryzen), "--profile", profile, "--yes", "--json",
                    env={"HOSTTUNE_TEST_CRASH": f"{i}:{when}"})
        assert p.returncode == -signal.SIGKILL, (i, p.returncode, p.stderr)
        r = run_cli("rollback", "--root", str(ryzen), "--yes", "--json")
        assert r.returncode == 0, (i, r.stdout, r.stderr)
        assert snapshot(ryzen) == original, f"tree differs after a kill at step {i} ({when})"


def test_apply_after_kill_completes_and_keeps_originals(ryzen):
    profile = "ryzen9950x-rtx5090"
    n = _steps(ryzen, profile)
    original = snapshot(ryzen)
    p = run_cli("apply", "--root", str(ryzen), "--profile", profile, "--yes",
                env={"HOSTTUNE_TEST_CRASH": f"{n // 2}:after"})
    assert p.returncode == -signal.SIGKILL
    rep = engine.apply(Host(ryzen), load_profile(profile))
    assert rep.recovered, "the interrupted run must be undone first"
    assert rep.ok, rep.error
    drift = engine.audit(Host(ryzen), load_profile(profile)).drift
    assert drift == [], drift
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == original


def test_second_apply_while_locked_is_refused(ryzen):
    from hosttune.engine.journal import Lock
    from hosttune.host import Host

    with Lock(Host(ryzen)):
        p = run_cli("apply", "--root", str(ryzen), "--yes")
    assert p.returncode == 2
    assert "holds" in p.stderr


def test_failed_step_reverts_the_whole_run(ryzen):
    """A step that fails (here: a kernel file that cannot be written) undoes every change of
    the run and the report says so."""
    target = ryzen / "proc/sys/vm/vfs_cache_pressure"
    target.unlink()
    (ryzen / "planted").write_text("100\n")
    # relative: an absolute target would resolve inside the tree (--root is a chroot)
    target.symlink_to("../../../planted")  # O_NOFOLLOW: the write fails with ELOOP
    original = snapshot(ryzen)
    rep = engine.apply(Host(ryzen), load_profile("inference"), only={"sysctl"})
    assert not rep.ok
    statuses = {s.status for s in rep.steps}
    assert "failed" in statuses and "reverted" in statuses
    assert snapshot(ryzen) == original
    j = json.loads((ryzen / "var/lib/hosttune/journal.json").read_text())
    assert j["entries"] == [] and j["transaction"] is None


def test_rollback_killed_midway_keeps_only_what_is_left(ryzen):
    """Each reverted step leaves the journal before the next one starts: a rollback killed
    after step k repeats at most the step in flight, and the next rollback finishes."""
    before = snapshot(ryzen)
    assert engine.apply(Host(ryzen), load_profile("inference")).ok
    journal = ryzen / "var/lib/hosttune/journal.json"
    n = len(json.loads(journal.read_text())["entries"])
    r = run_cli("rollback", "--root", str(ryzen), "--yes",
                env={"HOSTTUNE_TEST_CRASH": "rollback 3:after"})
    assert r.returncode == -9
    assert len(json.loads(journal.read_text())["entries"]) == n - 4
    r = run_cli("rollback", "--root", str(ryzen), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(ryzen) == before
