"""The harness's own pure parts (no QEMU: these run in the normal suite)."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

from tests.vm import checks, guest
from tests.vm.power_cut_plan import cut_matcher, plan


def test_mbr_has_one_bootable_linux_partition_at_1mib():
    b = guest.mbr(2048, 8388608)
    assert len(b) == 512 and b[510:] == b"\x55\xaa"
    e = b[446:462]
    assert e[0] == 0x80 and e[4] == 0x83
    assert int.from_bytes(e[8:12], "little") == 2048
    assert int.from_bytes(e[12:16], "little") == 8388608
    assert b[462:510] == b"\0" * 48  # the other three entries are empty


def test_stage_tar_is_whole_sectors_and_holds_the_script():
    raw = guest.stage_tar("echo hi\n", {"p.yaml": "name: x\n"})
    assert len(raw) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert sorted(tf.getnames()) == ["p.yaml", "stage.sh"]
        f = tf.extractfile("stage.sh")
        assert f is not None and f.read() == b"echo hi\n"


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_etc_differences_names_every_kind_and_honours_exceptions(tmp_path):
    a = _tar(tmp_path / "a.tar", {"etc/fstab": b"x\n", "etc/group-": b"1", "etc/gone": b""})
    b = _tar(tmp_path / "b.tar", {"etc/fstab": b"y\n", "etc/group-": b"2", "etc/new": b""})
    assert checks.etc_differences(a, b, {"etc/group-": "backup"}) == [
        "changed etc/fstab (content)", "removed etc/gone", "added etc/new"]
    assert checks.etc_differences(a, a, {}) == []


def test_audits_compare_without_pids():
    r1 = [{"tunable": "memlock", "key": "dockerd running limit", "status": "ok",
           "current": "8 MiB / hard 8 MiB (pid 265)", "desired": "unlimited", "note": ""}]
    r2 = [dict(r1[0], current="8 MiB / hard 8 MiB (pid 342)")]
    assert checks.comparable(r1) == checks.comparable(r2)
    assert checks.comparable(r1) != checks.comparable([dict(r1[0], status="drift")])


def test_cut_points_spread_over_apply_and_rollback():
    p = plan(12)
    assert [x[0] for x in p].count("apply") == 9 and [x[0] for x in p].count("rollback") == 3
    assert all(0 < f < 1 for _, f in p)
    assert len({f for ph, f in p if ph == "apply"}) == 9


def test_cut_matcher_waits_for_the_announced_point():
    m = cut_matcher()
    assert not m("HOSTTUNE-STEP apply 1:after\n")
    text = "HT-CUT-AT apply 1:after of 46\nHOSTTUNE-STEP apply 0:before\n"
    assert not m(text)
    assert not m(text + "HOSTTUNE-STEP apply 11:after\n")
    assert m(text + "HOSTTUNE-STEP apply 1:after\n")


@pytest.mark.parametrize("console", ["", "Linux version 6.1.0\n"])
def test_a_qemu_crash_before_any_console_line_is_told_apart(tmp_path, monkeypatch, console):
    """QEMU killed by a signal before the guest printed anything is QemuCrashed (boot() boots
    once more: the guest never ran); after the guest printed, it is a plain GuestError."""
    g = object.__new__(guest.Guest)
    log = tmp_path / "c.log"
    code = (f"import os, signal; open({str(log)!r}, 'w').write({console!r}); "
            "os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(g, "_argv", lambda *a: [sys.executable, "-c", code, "--"], raising=False)
    with pytest.raises(guest.GuestError) as exc:
        g._run_qemu(log, tmp_path / "s", tmp_path / "r", 30, 30, None, 0)
    assert isinstance(exc.value, guest.QemuCrashed) == (console == "")
    assert "qemu exited -11" in str(exc.value)
