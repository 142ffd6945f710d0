"""One meaning, one place: where systemd units live (UNIT_DIRS, find_unit) and the
daemon-reload post step (daemon_reload), as every family that writes units uses them."""

from __future__ import annotations

from pathlib import Path

from hosttune import engine
from hosttune.host import Host
from hosttune.profile import load_profile
from hosttune.tunables._systemd import UNIT_DIRS, find_unit
from tests.gpuhost import ryzen_5090


def test_find_unit_walks_the_whole_search_path_in_order(ryzen: Path) -> None:
    host = Host(ryzen)
    assert find_unit(host, "x.service") is None
    for d in reversed(UNIT_DIRS):  # each directory in turn shadows the ones after it
        (ryzen / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (ryzen / d.lstrip("/") / "x.service").write_text("[Service]\n")
        assert find_unit(host, "x.service") == f"{d}/x.service"
    (ryzen / "etc/systemd/system/y.service").mkdir(parents=True)  # a directory is no unit
    assert find_unit(host, "y.service") is None


def test_irqbalance_under_usr_local_is_found(tmp_path: Path) -> None:
    # irq_affinity had its own list without /usr/local/lib/systemd/system
    tree = ryzen_5090(tmp_path / "r5090")
    local = tree / "usr/local/lib/systemd/system"
    local.mkdir(parents=True)
    (tree / "lib/systemd/system/irqbalance.service").rename(local / "irqbalance.service")
    p = engine.plan(Host(tree), load_profile("ryzen9950x-rtx5090"), only={"gpu_irq"})
    ids = [c.id for c in p.changes]
    assert "gpu_irq/irqbalance-restart" in ids
    assert any(c.path and c.path.startswith("/etc/systemd/system/irqbalance.service.d/")
               for c in p.changes)


def _reloads(host: Host) -> list:
    p = engine.plan(host, load_profile("inference"), only={"memlock", "swap"})
    return [c for c in p.changes if c.params.get("argv") == ["systemctl", "daemon-reload"]]


def test_every_family_plans_the_same_reload_and_only_where_systemd_runs(ryzen: Path) -> None:
    assert _reloads(Host(ryzen)) == []  # no systemd under the root: nothing to reload
    (ryzen / "run/systemd/system").mkdir(parents=True)
    reloads = _reloads(Host(ryzen))
    assert sorted(c.tunable for c in reloads) == ["memlock", "swap"]
    for c in reloads:
        assert c.id == f"{c.tunable}/daemon-reload" and c.kind == "command"
        assert not c.runtime and c.summary.startswith("systemctl daemon-reload (")
        assert c.params == {"argv": ["systemctl", "daemon-reload"],
                            "revert_argv": ["systemctl", "daemon-reload"], "post": True}
