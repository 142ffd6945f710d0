"""Containers on the live dockerd: cgroup files matched to Docker names via the Engine API."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from hosttune.host import Host
from hosttune.monitor.parsers import parse_status_vmlck
from hosttune.monitor.snapshot import ContainersReading, Monitor
from tests.conftest import need

IMAGE = "hosttune-monitor-busybox:test"


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _ensure_image(tmp_path: Path) -> None:
    if _docker("image", "inspect", IMAGE).returncode == 0:
        return
    bb = shutil.which("busybox") or "/bin/busybox"
    need(os.path.exists(bb), "busybox-static not installed")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(bb, ctx / "busybox")
    # no registry is reachable here: build FROM scratch
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\n'
                                    'ENTRYPOINT ["/bin/busybox"]\n')
    r = _docker("build", "-q", "-t", IMAGE, str(ctx))
    assert r.returncode == 0, r.stderr


@pytest.mark.docker
def test_live_container_named_through_engine_api(tmp_path: Path) -> None:
    need(os.path.exists("/var/run/docker.sock") and shutil.which("docker") is not None
         and _docker("info").returncode == 0, "dockerd not running")
    _ensure_image(tmp_path)
    name = f"hosttune-mon-{uuid.uuid4().hex[:8]}"
    r = _docker("run", "-d", "--name", name, "--cpuset-cpus", "0", "--memory", "64m", IMAGE,
                "sleep", "120")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        mon = Monitor(Host("/"), with_audit=False)
        ct = mon.snapshot().containers
        assert isinstance(ct, ContainersReading), ct
        assert ct.names_from == "docker"
        mine = [c for c in ct.containers if c.id == cid]
        assert len(mine) == 1, [c.name for c in ct.containers]
        c = mine[0]
        assert c.name == name
        assert c.cpuset == (0,) and c.cpuset_requested == "0"
        assert not any("splits" in f or "docker asked" in f for f in c.cpuset_findings)
        assert c.pids and c.memory_bytes is not None and c.memory_bytes > 0
        assert c.cpu_seconds is not None
        expect = sum(parse_status_vmlck(Path(f"/proc/{p}/status").read_text()) or 0
                     for p in c.pids)
        assert c.vmlck_bytes == expect
        # a known id is never looked up again (names and cpusets are fixed per container)
        assert mon.docker is not None
        mon.docker.min_interval_s = 0
        calls = mon.docker.calls
        assert mon.docker.lookup(Host("/"), {cid}) == {cid: (name, "0")}
        assert mon.docker.calls == calls
    finally:
        _docker("rm", "-f", name)
