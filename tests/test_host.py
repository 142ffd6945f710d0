"""The host door: root mapping, atomic writes that refuse planted symlinks, offline runner."""

from __future__ import annotations

import os

import pytest

from hosttune.errors import HostError
from hosttune.host import Host


def test_paths_map_under_root(tmp_path):
    h = Host(tmp_path)
    assert h.offline
    assert h.path("/etc/fstab") == tmp_path / "etc/fstab"
    assert h.unmap(tmp_path / "etc/fstab") == "/etc/fstab"
    with pytest.raises(HostError):
        h.path("etc/fstab")
    assert not Host("/").offline


def test_offline_runner_records_and_never_runs(tmp_path):
    h = Host(tmp_path)
    marker = tmp_path / "ran"
    res = h.run(["touch", str(marker)])
    assert res.skipped and res.ok
    assert not marker.exists()
    assert h.runner.skipped == [("touch", str(marker))]
    assert h.runner.ran == []


def test_live_runner_argv_and_timeout():
    h = Host("/")
    res = h.run(["sh", "-c", "echo $0", "a b; rm -rf /nonexistent"])
    assert res.stdout.strip() == "a b; rm -rf /nonexistent"  # an argument, never a shell line
    with pytest.raises(HostError, match="timed out"):
        h.run(["sleep", "5"], timeout_s=0.2)
    with pytest.raises(HostError, match="command not found"):
        h.run(["/nonexistent/prog"])


def test_atomic_write_mode_and_content(tmp_path):
    h = Host(tmp_path)
    h.makedirs("/etc/sysctl.d")
    h.write_file("/etc/sysctl.d/x.conf", b"a = 1\n", mode=0o640)
    p = tmp_path / "etc/sysctl.d/x.conf"
    assert p.read_bytes() == b"a = 1\n"
    assert oct(p.stat().st_mode & 0o777) == "0o640"
    assert [f for f in os.listdir(p.parent) if "tmp" in f] == []


def test_refuses_planted_symlink_in_target_and_parent(tmp_path):
    h = Host(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("keep\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/evil.conf").symlink_to(secret)
    with pytest.raises(HostError, match="symlink"):
        h.write_file("/etc/evil.conf", b"pwned\n")
    assert secret.read_text() == "keep\n"
    (tmp_path / "etc/linkdir").symlink_to(tmp_path)
    with pytest.raises(HostError, match="symlink"):
        h.write_file("/etc/linkdir/secret", b"pwned\n")
    assert secret.read_text() == "keep\n"


def test_kernel_write_refuses_symlink(tmp_path):
    h = Host(tmp_path)
    (tmp_path / "target").write_text("1\n")
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/x").symlink_to(tmp_path / "target")
    with pytest.raises(HostError):
        h.write_kernel("/proc/sys/vm/x", "2")
    assert (tmp_path / "target").read_text() == "1\n"


def test_makedirs_reports_created(tmp_path):
    h = Host(tmp_path)
    assert h.makedirs("/a/b/c") == ["/a", "/a/b", "/a/b/c"]
    assert h.makedirs("/a/b/c") == []


def test_facts_on_fake_trees(ryzen, epyc):
    f = Host(ryzen).facts
    assert len(f.cpus) == 32 and f.smt
    assert len(f.l3_domains) == 2
    assert f.physical_cores[0] == (0, 16)
    assert f.cpufreq_policies[0] == "policy0"
    assert f.mem_total_bytes == 128 * 1024**3
    e = Host(epyc).facts
    assert [n.id for n in e.nodes] == [0, 1]
    assert len(e.l3_domains) == 16
    assert e.cpu(32).node == 1 and e.cpu(96).node == 1 and e.cpu(0).node == 0


# --- confinement: nothing outside --root is read or written -------------------------------------
def test_dotdot_stays_in_the_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    h = Host(tree)
    assert h.path("/../../../../tmp/x") == tree / "tmp/x"
    assert h.path("/etc/../../etc/fstab") == tree / "etc/fstab"
    h.write_file("/../../../../x", b"in\n")
    assert (tree / "x").read_bytes() == b"in\n"
    assert not (tmp_path / "x").exists()


def test_symlinks_resolve_inside_the_root_for_reads(tmp_path):
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "proc/sys").mkdir(parents=True)
    outside.mkdir()
    (outside / "swappiness").write_text("OUTSIDE\n")
    (tree / "elsewhere").mkdir()
    (tree / "elsewhere/swappiness").write_text("inside\n")
    # an absolute target is a path of the tree (a chroot), not of the live system
    (tree / "proc/sys/vm").symlink_to(outside)
    h = Host(tree)
    assert h.read_text("/proc/sys/vm/swappiness") is None
    (tree / "proc/sys/vm").unlink()
    (tree / "proc/sys/vm").symlink_to("/elsewhere")
    assert h.read_value("/proc/sys/vm/swappiness") == "inside"
    # relative targets that climb stop at the root
    (tree / "proc/sys/vm").unlink()
    (tree / "proc/sys/vm").symlink_to("../../../../../../../" + str(outside).lstrip("/"))
    assert h.read_text("/proc/sys/vm/swappiness") is None
    assert h.listdir("/proc/sys/vm") == []
    assert h.glob("/proc/sys/vm/*") == []


def test_symlink_loop_to_itself_is_an_error(tmp_path):
    (tmp_path / "etc").symlink_to("/etc")  # TREE/etc -> /etc is TREE/etc itself: a loop
    h = Host(tmp_path)
    with pytest.raises(HostError, match="symbolic links"):
        h.read_text("/etc/passwd")


def test_writes_refuse_a_symlinked_directory_even_inside(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "etc").symlink_to("real")
    h = Host(tmp_path)
    with pytest.raises(HostError, match="symlink /etc"):
        h.write_file("/etc/x.conf", b"x\n")
    with pytest.raises(HostError, match="symlink"):
        h.makedirs("/etc/sysctl.d")
    assert list((tmp_path / "real").iterdir()) == []


def test_reading_a_fifo_or_device_is_refused_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    h = Host(tmp_path)
    with pytest.raises(HostError, match="not a regular file"):
        h.read_text("/fifo")
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with pytest.raises(HostError, match="larger than"):
        h.read_bytes("/big", limit=1024)


def test_glob_matches_inside_the_root(tmp_path):
    for n in ("cpu0", "cpu1", "cpufreq"):
        (tmp_path / "sys/devices/system/cpu" / n).mkdir(parents=True)
    h = Host(tmp_path)
    assert h.glob("/sys/devices/system/cpu/cpu[0-9]") == ["/sys/devices/system/cpu/cpu0",
                                                          "/sys/devices/system/cpu/cpu1"]


def test_state_dirs_of_one_tree_share_the_lock(tmp_path, monkeypatch):
    from hosttune.engine.journal import Lock
    from hosttune.errors import LockedError

    a = Host(tmp_path, state_dir="/var/lib/a")
    b = Host(tmp_path, state_dir="/var/lib/b")
    with Lock(a), pytest.raises(LockedError, match="holds"):
        with Lock(b):
            pass
    with Lock(b):  # released
        pass
    assert Host(tmp_path, state_dir="/../../var/lib/x").state_dir == "/var/lib/x"
    with pytest.raises(HostError, match="absolute"):
        Host(tmp_path, state_dir="var/x")


def test_a_masked_unit_reads_as_empty_on_the_live_root(tmp_path):
    """systemctl mask links a unit to /dev/null: it reads as an empty file (found on a real
    boot: the doctor refused the masked getty@tty1.service and exited 2)."""
    unit = tmp_path / "getty@tty1.service"
    unit.symlink_to("/dev/null")
    assert Host("/").read_bytes(str(unit)) == b""
    # other devices stay refused
    zero = tmp_path / "zero.service"
    zero.symlink_to("/dev/zero")
    with pytest.raises(HostError, match="not a regular file"):
        Host("/").read_bytes(str(zero))
