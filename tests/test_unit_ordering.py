"""hosttune's boot-time units never join an ordering cycle that a hand-made unit opened
(tunables/_ordering.py), and the doctor names that cycle (systemd.ordering-cycle).

Found on a booted Debian 12 guest (tests/vm/test_seeded_doctor.py): the seed's
nvidia-persistenced.service has After=multi-user.target and WantedBy=multi-user.target; with
hosttune-boot.service ordered after it (and the runtimes after hosttune-boot), systemd broke
the cycle by deleting hosttune-boot's start job in one boot and docker's plus containerd's in
another."""

from __future__ import annotations

from pathlib import Path

from hosttune import doctor, engine
from hosttune.doctor.base import Severity
from hosttune.host import Host
from hosttune.profile import load_profile
from hosttune.tunables._ordering import after_of, safe_after, waits_for_boot
from hosttune.tunables.base import Context
from hosttune.tunables.bootunit import UNIT_PATH, BootUnitTunable
from hosttune.tunables.gpu_persistence import render_unit
from tests.doctor_helpers import booted, minimal
from tests.seed_tree import CPUFREQ_UNIT, GPU_CLOCKS_UNIT, PERSISTENCED_UNIT

ETC = "etc/systemd/system"
OURS = frozenset({"hosttune-boot.service", "docker.service", "containerd.service"})


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _boot_unit(root: Path) -> tuple[str, str]:
    ev = BootUnitTunable().evaluate(Context(Host(root), load_profile("inference")))
    (ch,) = [c for c in ev.changes if c.path == UNIT_PATH]
    (row,) = [r for r in ev.rows if r.key == "unit hosttune-boot.service"]
    return ch.value or "", row.note


def _after_line(unit: str) -> list[str]:
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("After=")]
    return line.removeprefix("After=").split()


def test_boot_unit_is_not_ordered_after_a_unit_that_waits_for_the_boot(ryzen):
    # hosttune's own persistence unit (no After=multi-user.target): ordered after it
    _write(ryzen, f"{ETC}/nvidia-persistenced.service",
           render_unit("/usr/bin/nvidia-persistenced", None))
    unit, note = _boot_unit(ryzen)
    assert "nvidia-persistenced.service" in _after_line(unit)
    assert "ordering cycle" not in note
    # the seed's unit: After=multi-user.target -> left out, and the row says why
    _write(ryzen, f"{ETC}/nvidia-persistenced.service", PERSISTENCED_UNIT)
    unit, note = _boot_unit(ryzen)
    assert _after_line(unit) == ["local-fs.target", "systemd-sysctl.service"]
    assert "not ordered after nvidia-persistenced.service" in note
    assert "multi-user.target" in note and "systemd.ordering-cycle" in note


def test_the_chain_goes_through_drop_ins_and_other_units(ryzen):
    host = Host(ryzen)
    _write(ryzen, f"{ETC}/a.service", "[Unit]\nAfter=b.service\n")
    _write(ryzen, "usr/lib/systemd/system/b.service", "[Unit]\nDescription=b\n")
    assert waits_for_boot(host, "a.service", OURS) is None
    _write(ryzen, f"{ETC}/b.service.d/late.conf", "[Unit]\nAfter=graphical.target\n")
    assert waits_for_boot(host, "a.service", OURS) == ["a.service", "b.service",
                                                         "graphical.target"]
    # an empty After= in a later drop-in resets the list (systemd.unit(5))
    _write(ryzen, f"{ETC}/b.service.d/zz-reset.conf", "[Unit]\nAfter=\n")
    assert after_of(host, "b.service") == []
    assert waits_for_boot(host, "a.service", OURS) is None
    # ordered after one of ours closes a cycle as well
    _write(ryzen, f"{ETC}/c.service", "[Unit]\nAfter=docker.service\n")
    kept, notes = safe_after(host, ("c.service", "a.service", "local-fs.target"), OURS)
    assert kept == ["a.service", "local-fs.target"]
    assert len(notes) == 1 and "c.service" in notes[0] and "docker.service" in notes[0]
    # a loop of After= among other units ends (no hang), with no chain to the boot
    _write(ryzen, f"{ETC}/x.service", "[Unit]\nAfter=y.service\n")
    _write(ryzen, f"{ETC}/y.service", "[Unit]\nAfter=x.service\n")
    assert waits_for_boot(host, "x.service", OURS) is None


def test_apply_then_audit_on_the_seed_unit_is_clean(ryzen):
    _write(ryzen, f"{ETC}/nvidia-persistenced.service", PERSISTENCED_UNIT)
    loaded = load_profile("inference")
    assert engine.apply(Host(ryzen), loaded, only={"bootunit"}).ok
    text = (ryzen / UNIT_PATH.lstrip("/")).read_text()
    assert "nvidia-persistenced" not in text
    assert not engine.audit(Host(ryzen), loaded, only={"bootunit"}).drift


# systemd 252 on a Debian 12 guest, as the journal has it: logged before journald ran, so
# imported from the kernel log (_TRANSPORT=kernel, SYSLOG_PID=1), never under _PID=1
JOURNAL = ("multi-user.target: Found ordering cycle on gpu-clocks.service/start\n"
           "multi-user.target: Found dependency on nvidia-persistenced.service/start\n"
           "multi-user.target: Found dependency on multi-user.target/start\n"
           "multi-user.target: Job gpu-clocks.service/start deleted to break ordering cycle "
           "starting with multi-user.target/start\n"
           "multi-user.target: Found ordering cycle on docker.service/start\n"
           "multi-user.target: Found dependency on hosttune-boot.service/start\n"
           "multi-user.target: Found dependency on nvidia-persistenced.service/start\n"
           "multi-user.target: Found dependency on multi-user.target/start\n"
           "multi-user.target: Job docker.service/start deleted to break ordering cycle "
           "starting with multi-user.target/start\n"
           "multi-user.target: Found ordering cycle on cpufreq-performance.service/start\n"
           "multi-user.target: Found dependency on multi-user.target/start\n"
           "multi-user.target: Job cpufreq-performance.service/start deleted to break "
           "ordering cycle starting with multi-user.target/start\n")
EARLY = ("journalctl", "_PID=1", "+", "_TRANSPORT=kernel", "SYSLOG_PID=1")


def test_doctor_names_the_cycle_and_what_systemd_skipped(tmp_path):
    b = minimal(tmp_path)
    b.write(f"/{ETC}/nvidia-persistenced.service", PERSISTENCED_UNIT)
    b.write(f"/{ETC}/gpu-clocks.service", GPU_CLOCKS_UNIT)
    h = booted(b.root, {EARLY: JOURNAL})
    fs = [f for f in doctor.run(h).findings if f.check == "systemd.ordering-cycle"]
    assert len(fs) == 1, [f.to_json() for f in fs]
    (f,) = fs
    assert f.where == f"/{ETC}/nvidia-persistenced.service"
    assert f.also == (f"/{ETC}/gpu-clocks.service",)
    # the jobs of its cycle; cpufreq-performance's cycle is another one (no unit file here)
    assert "deleted the start job of docker.service, gpu-clocks.service to" in f.why
    assert "cpufreq" not in f.why
    assert "gpu.persistence" in f.fix
    # DefaultDependencies=no: the target adds no After= on it, so there is no cycle
    b.write(f"/{ETC}/nvidia-persistenced.service",
            PERSISTENCED_UNIT.replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n"))
    b.write(f"/{ETC}/gpu-clocks.service", "[Unit]\nDescription=x\n")
    assert not [f for f in doctor.run(Host(b.root)).findings
                if f.check == "systemd.ordering-cycle"]


CHECK_UNIT = """[Unit]
Description=check the governor
After=cpufreq-performance.service

[Service]
Type=oneshot
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""


def test_each_cycle_names_only_its_own_deleted_jobs(tmp_path):
    b = minimal(tmp_path)
    b.write(f"/{ETC}/nvidia-persistenced.service", PERSISTENCED_UNIT)
    b.write(f"/{ETC}/gpu-clocks.service", GPU_CLOCKS_UNIT)
    b.write(f"/{ETC}/cpufreq-performance.service", CPUFREQ_UNIT)
    b.write(f"/{ETC}/governor-check.service", CHECK_UNIT)
    fs = {f.where.rsplit("/", 1)[1]: f for f in doctor.run(booted(b.root, {EARLY: JOURNAL}))
          .findings if f.check == "systemd.ordering-cycle"}
    assert sorted(fs) == ["cpufreq-performance.service", "nvidia-persistenced.service"]
    assert "deleted the start job of cpufreq-performance.service to" in \
        fs["cpufreq-performance.service"].why
    assert "docker.service, gpu-clocks.service to" in fs["nvidia-persistenced.service"].why
    # later systemd versions name the whole cycle in one line
    one_line = ("multi-user.target: Found ordering cycle: multi-user.target → "
                "gpu-clocks.service → nvidia-persistenced.service → multi-user.target\n"
                "multi-user.target: Job nvidia-persistenced.service/start deleted to break "
                "ordering cycle starting with multi-user.target/start\n")
    fs = {f.where.rsplit("/", 1)[1]: f for f in doctor.run(booted(b.root, {EARLY: one_line}))
          .findings if f.check == "systemd.ordering-cycle"}
    assert "differs from boot to boot" in fs["cpufreq-performance.service"].why
    assert "deleted the start job of nvidia-persistenced.service to" in \
        fs["nvidia-persistenced.service"].why


def test_a_unit_after_its_own_target_alone_is_no_cycle(tmp_path):
    # After=multi-user.target and WantedBy=multi-user.target: systemd skips the target's
    # After= on it (a loop of two), so it just starts last. Only a third unit the target
    # wants, ordered after it, closes a cycle (gpu-clocks.service after persistenced).
    b = minimal(tmp_path)
    b.write(f"/{ETC}/cpufreq-performance.service", CPUFREQ_UNIT)
    b.write(f"/{ETC}/nvidia-persistenced.service", PERSISTENCED_UNIT)
    fs = [f for f in doctor.run(Host(b.root)).findings
          if f.check in ("systemd.ordering-cycle", "systemd.after-own-target")]
    assert sorted((f.check, f.where.rsplit("/", 1)[1], f.severity) for f in fs) == [
        ("systemd.after-own-target", "cpufreq-performance.service", Severity.WARNING),
        ("systemd.after-own-target", "nvidia-persistenced.service", Severity.WARNING)]
    assert "no cycle" in fs[0].why and "cpu.governor" in fs[0].fix
    b.write(f"/{ETC}/gpu-clocks.service", GPU_CLOCKS_UNIT)
    fs = [f for f in doctor.run(Host(b.root)).findings
          if f.check in ("systemd.ordering-cycle", "systemd.after-own-target")]
    assert sorted((f.check, f.where.rsplit("/", 1)[1]) for f in fs) == [
        ("systemd.after-own-target", "cpufreq-performance.service"),
        ("systemd.ordering-cycle", "nvidia-persistenced.service")]
