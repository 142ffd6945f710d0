"""tests/dockerd.py's end-of-session cleanup, run for real: a dockerd started the way the suite
starts one (its own socket, data-root, exec-root and log, inside a fresh network namespace so
its iptables chains and docker0 bridge are its own), a test image built in it, then
stop_started_dockerd(); afterwards the daemon is gone, the namespace's firewall is as it was
before, docker0 is gone and the image went with the daemon's own removal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, need

CHILD = r'''
import io, json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from tests import dockerd as d
base = sys.argv[2]
d.SOCKET = base + "/docker.sock"
d.LOG, d.LOCK, d.USERS = base + "/dockerd.log", base + "/lock", base + "/users"
d.EXTRA_ARGS = ["-H", "unix://" + d.SOCKET, "--data-root", base + "/data",
                "--exec-root", base + "/exec", "--pidfile", base + "/docker.pid"]
out = {"before": subprocess.run(["iptables-save"], capture_output=True, text=True).stdout}
err = d.ensure_dockerd()
if err:
    print(json.dumps({"error": err})); sys.exit(0)
c = d._client()
c.images.build(fileobj=io.BytesIO(b"FROM scratch\nLABEL hosttune=cleanup-test\n"),
               tag=d.IMAGE_PREFIX + "-cleanup-test", rm=True)
out["images_during"] = sorted(t for i in c.images.list() for t in i.tags)
c.close()
out["firewall_during"] = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
out["bridge_during"] = d.has_bridge()
pid = d._started.pid
out["note"] = d.stop_started_dockerd()
out["alive_after"] = os.path.exists(f"/proc/{pid}") and \
    open(f"/proc/{pid}/stat").read().split()[2] != "Z"
out["after"] = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
out["bridge_after"] = d.has_bridge()
out["socket_after"] = os.path.exists(d.SOCKET)
print(json.dumps(out))
'''


def test_stop_started_dockerd_leaves_nothing(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "needs root to run dockerd")
    need(shutil.which("dockerd") is not None, "dockerd is not installed (docker.io)")
    need(shutil.which("iptables-save") is not None, "iptables-save is not installed")
    base = tmp_path / "d"
    base.mkdir()
    # unshare -n: dockerd's iptables chains and docker0 live in this namespace only, so the
    # host's own dockerd (if any) and firewall are untouched and the before/after is exact
    r = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", CHILD, str(REPO),
                        str(base)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in out, out.get("error")
    # what the cleanup has to undo was really there
    assert "DOCKER" in out["firewall_during"] and out["bridge_during"]
    assert "hosttune-e2e-cleanup-test:latest" in out["images_during"]
    assert out["note"] is None
    assert not out["alive_after"] and not out["socket_after"]
    assert out["after"] == out["before"], out["after"]
    assert not out["bridge_after"]
    # the test image is gone from the daemon's own image store (its data-root)
    repos = list((base / "data/image").glob("*/repositories.json"))
    assert repos, sorted(p.name for p in (base / "data").iterdir())
    assert all("hosttune-e2e" not in p.read_text() for p in repos)
