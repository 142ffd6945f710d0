"""cpufreq tunable: governors per policy, EPP (auto / explicit / EBUSY), grouping, no cpufreq."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from hosttune import engine
from hosttune.engine import core
from hosttune.errors import ApplyError, HostError, ProfileError
from hosttune.host import Host
from hosttune.profile import load_profile
from hosttune.tunables.base import Change, Status
from hosttune.tunables.cpufreq import implied_epp, read_policies
from tests.helpers import snapshot

POL = "sys/devices/system/cpu/cpufreq"


def _profile(tree: Path, cpu_yaml: str):
    p = tree.parent / "p.yaml"  # outside the tree: snapshots compare the tree only
    p.write_text(f"name: t\ncpu: {cpu_yaml}\n")
    return load_profile(str(p))


def _rows(tree: Path, loaded=None):
    rep = engine.audit(Host(tree), loaded or load_profile("inference"), only={"cpufreq"})
    return rep.rows


def test_implied_epp():
    assert implied_epp("amd-pstate-epp", "performance") == "performance"
    assert implied_epp("intel_pstate", "performance") == "performance"
    assert implied_epp("amd-pstate-epp", "powersave") is None
    assert implied_epp("intel_cpufreq", "performance") is None  # passive mode: EPP is free
    assert implied_epp("acpi-cpufreq", "performance") is None


def test_policies_in_numeric_order(ryzen):
    nums = [p.num for p in read_policies(Host(ryzen))]
    assert nums == list(range(32))


def test_ryzen_rows_are_grouped_and_epp_auto_is_never_written(ryzen):
    rows = _rows(ryzen)
    assert [(r.key, r.status) for r in rows] == [
        ("governor (32 policies)", Status.DRIFT), ("epp (32 policies)", Status.DRIFT)]
    assert "policy0-31" in rows[0].note
    assert "EBUSY" in rows[1].note
    p = engine.plan(Host(ryzen), load_profile("inference"), only={"cpufreq"})
    assert len(p.changes) == 32
    assert all(c.kind == "kernel" and c.runtime for c in p.changes)
    assert not any("energy_performance_preference" in (c.path or "") for c in p.changes)


def test_ryzen_apply_rollback(ryzen):
    before = snapshot(ryzen)
    rep = engine.apply(Host(ryzen), load_profile("inference"), only={"cpufreq"})
    assert rep.ok, rep.error
    assert (ryzen / POL / "policy17/scaling_governor").read_text() == "performance\n"
    # EPP untouched (the driver derives it); a --root tree cannot show that: offline, not drift
    assert (ryzen / POL / "policy17/energy_performance_preference").read_text() == \
        "balance_performance\n"
    rows = {r.key: r for r in _rows(ryzen)}
    assert rows["governor (32 policies)"].status == Status.OK
    assert rows["epp (32 policies)"].status == Status.OFFLINE
    assert engine.apply(Host(ryzen), load_profile("inference"), only={"cpufreq"}).steps == []
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == before


def test_mixed_governors_make_one_row_per_value(ryzen):
    for n in range(4):
        (ryzen / POL / f"policy{n}/scaling_governor").write_text("performance\n")
        (ryzen / POL / f"policy{n}/energy_performance_preference").write_text("performance\n")
    rows = [(r.key, r.current, r.status) for r in _rows(ryzen)]
    assert ("governor (4 policies)", "performance", Status.OK) in rows
    assert ("governor (28 policies)", "powersave", Status.DRIFT) in rows
    assert ("epp (4 policies)", "performance", Status.OK) in rows
    assert len(rows) == 4


def test_governor_not_offered_is_unsupported(ryzen):
    rows = _rows(ryzen, _profile(ryzen, "{governor: schedutil, epp: null}"))
    assert [(r.status, r.desired) for r in rows] == [(Status.UNSUPPORTED, "schedutil")]
    assert "performance powersave" in rows[0].note
    p = engine.plan(Host(ryzen), _profile(ryzen, "{governor: schedutil, epp: null}"),
                    only={"cpufreq"})
    assert p.changes == []


def test_explicit_epp_under_powersave_is_written_and_restored(ryzen):
    before = snapshot(ryzen)
    loaded = _profile(ryzen, "{governor: powersave, epp: balance_power}")
    p = engine.plan(Host(ryzen), loaded, only={"cpufreq"})
    assert len(p.changes) == 32 and all(c.kind == "action" and c.runtime for c in p.changes)
    assert engine.apply(Host(ryzen), loaded, only={"cpufreq"}).ok
    assert (ryzen / POL / "policy5/energy_performance_preference").read_text() == \
        "balance_power\n"
    assert not engine.audit(Host(ryzen), loaded, only={"cpufreq"}).drift
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == before


def test_explicit_epp_not_offered_is_unsupported(ryzen):
    rows = _rows(ryzen, _profile(ryzen, "{governor: null, epp: turbo}"))
    assert [r.status for r in rows] == [Status.UNSUPPORTED]
    assert "balance_power" in rows[0].note


def test_explicit_epp_under_performance_is_refused_before_writing(ryzen, cli):
    before = snapshot(ryzen)
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(ryzen), _profile(ryzen, "{governor: performance, epp: balance_power}"),
                    only={"cpufreq"})
    assert "cpu.epp" in str(ei.value) and "EBUSY" in str(ei.value)
    r = cli("apply", "--root", str(ryzen), "--yes", "--profile", str(ryzen.parent / "p.yaml"),
            "--only", "cpufreq")
    assert r.exit_code == 2
    assert "cpu.epp" in r.output
    # intel_pstate accepts 'performance' under performance: nothing to refuse
    engine.plan(Host(ryzen), _profile(ryzen, "{governor: performance, epp: performance}"),
                only={"cpufreq"})
    assert snapshot(ryzen) == before


class _EbusyHost(Host):
    """A host whose EPP writes fail like amd-pstate-epp under the performance governor."""

    def write_kernel(self, p: str, value: str) -> None:
        if p.endswith("energy_performance_preference"):
            try:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            except OSError as err:
                raise HostError(f"writing {value!r} to {p} failed: busy") from err
        super().write_kernel(p, value)


def test_ebusy_is_explained(ryzen):
    host = _EbusyHost(ryzen)
    ch = Change(id="cpufreq/epp/policy0", tunable="cpufreq", kind="action", summary="",
                path="/sys/devices/system/cpu/cpufreq/policy0/energy_performance_preference",
                value="power", runtime=True, params={"driver": "amd-pstate-epp", "knob": "epp"})
    with pytest.raises(ApplyError) as ei:
        core.do_apply(host, ch)
    msg = str(ei.value)
    assert "EBUSY" in msg and "amd-pstate-epp owns EPP" in msg and "cpu.epp: auto" in msg


def test_ebusy_during_apply_reverts_the_transaction(ryzen):
    before = snapshot(ryzen)
    loaded = _profile(ryzen, "{governor: powersave, epp: power}")
    rep = engine.apply(_EbusyHost(ryzen), loaded, only={"cpufreq"})
    assert not rep.ok and "EBUSY" in rep.error
    assert snapshot(ryzen) == before


def test_epyc_acpi_cpufreq_has_no_epp(epyc):
    rows = _rows(epyc)
    assert [(r.key, r.status) for r in rows] == [
        ("governor (128 policies)", Status.DRIFT), ("epp (128 policies)", Status.UNSUPPORTED)]
    assert "acpi-cpufreq has no EPP" in rows[1].note


def test_no_cpufreq_is_unsupported(vm):
    """This VM has no cpufreq (the tree is copied from the live /sys)."""
    live = os.path.isdir("/sys/devices/system/cpu/cpufreq") and any(
        d.startswith("policy") for d in os.listdir("/sys/devices/system/cpu/cpufreq"))
    rows = _rows(vm)
    if live:
        assert all(r.key.startswith(("governor", "epp")) for r in rows)
        return
    assert [(r.key, r.status) for r in rows] == [("governor", Status.UNSUPPORTED),
                                               ("epp", Status.UNSUPPORTED)]
    assert "no cpufreq" in rows[0].note
    assert engine.plan(Host(vm), load_profile("inference"), only={"cpufreq"}).changes == []


def test_runtime_only_plan_keeps_governor_changes(ryzen, cli):
    r = cli("plan", "--root", str(ryzen), "--only", "cpufreq", "--runtime-only", "--json")
    data = json.loads(r.output)
    assert len(data["changes"]) == 32 and all(c["runtime"] for c in data["changes"])


def test_unreadable_cpufreq_is_needs_root(ryzen):
    from tests.helpers import NonRootHost

    host = NonRootHost(ryzen)
    host.deny = ("/sys/devices/system/cpu/cpufreq/policy3/",)
    rows = engine.audit(host, load_profile("inference"), only={"cpufreq"}).rows
    assert [r.status for r in rows] == [Status.NEEDS_ROOT]


def test_boot_overriders_are_conflicts(ryzen):
    wants = ryzen / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ondemand.service").symlink_to("/lib/systemd/system/ondemand.service")
    (wants / "cpufrequtils.service").symlink_to("/lib/systemd/system/cpufrequtils.service")
    (ryzen / "etc/default").mkdir()
    (ryzen / "etc/default/cpufrequtils").write_text('GOVERNOR="performance"\n')
    rows = {r.key: r for r in _rows(ryzen)}
    assert rows["boot override ondemand.service"].status == Status.CONFLICT
    assert "boot override cpufrequtils.service" not in rows  # it agrees with the profile
    (ryzen / "etc/default/cpufrequtils").write_text('GOVERNOR="ondemand"\n')
    rows = {r.key: r for r in _rows(ryzen)}
    assert "GOVERNOR=ondemand" in rows["boot override cpufrequtils.service"].note
    (ryzen / "etc/systemd/system/ondemand.service").symlink_to("/dev/null")  # masked
    assert "boot override ondemand.service" not in {r.key for r in _rows(ryzen)}


def test_explicit_performance_epp_under_performance_is_never_written(ryzen):
    """amd-pstate-epp answers EBUSY to every EPP write under the performance governor, even
    'performance': the governor change sets it, hosttune must not write it."""
    loaded = _profile(ryzen, "{governor: performance, epp: performance}")
    p = engine.plan(Host(ryzen), loaded, only={"cpufreq"})
    assert p.changes and all(c.path.endswith("scaling_governor") for c in p.changes)
    rows = {r.key: r for r in p.audit.rows}
    assert rows["epp (32 policies)"].desired == "performance (set by the performance governor)"


def test_row_keys_unique_when_groups_have_equal_sizes() -> None:
    from hosttune.tunables.cpufreq import _Grouper

    g = _Grouper("cpufreq", "governor")
    for n in range(4):
        g.add(n, "powersave" if n % 2 else "performance", "performance",
              Status.DRIFT if n % 2 else Status.OK)
    keys = [r.key for r in g.rows()]
    assert sorted(keys) == ["governor policy0,2", "governor policy1,3"]
