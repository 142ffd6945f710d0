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
