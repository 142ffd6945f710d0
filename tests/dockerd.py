"""Start Debian's dockerd for tests when none answers, and leave it running for the next test.

Defaults only (data-root /var/lib/docker, exec-root /var/run/docker, /var/run/docker.sock): the
same daemon `docker` and docker-compose talk to. dockerd inherits this process's memlock limit
(8 MiB here, and the hard limit cannot be raised without CAP_SYS_RESOURCE), which is why the
e2e uses IPC_LOCK or a memlock ulimit <= 8 MiB."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from typing import Any

SOCKET = "/var/run/docker.sock"
LOG = "/tmp/hosttune-test-dockerd.log"
LOCK = "/tmp/hosttune-dockerd.lock"


def _client() -> Any:
    import docker

    return docker.DockerClient(base_url=f"unix://{SOCKET}", version="auto", timeout=60)


def _answers() -> bool:
    if not os.path.exists(SOCKET):
        return False
    try:
        c = _client()
        try:
            return bool(c.ping())
        finally:
            c.close()
    except Exception:
        return False


def ensure_dockerd(timeout_s: float = 90) -> str | None:
    """Make sure a dockerd answers on the default socket. Returns None when it does, else the
    reason it cannot (not root, docker.io not installed, start failed - with the log tail)."""
    if os.geteuid() != 0:
        return "needs root to run dockerd"
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd"
                                          if os.path.exists("/usr/sbin/dockerd") else None)
    if dockerd is None:
        return "dockerd is not installed (apt-get install docker.io)"
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _answers():
            return None
        with open(LOG, "ab") as log:
            subprocess.Popen([dockerd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _answers():
                return None
            time.sleep(0.5)
        try:
            with open(LOG, encoding="utf-8", errors="replace") as fh:
                tail = fh.read()[-2000:]
        except OSError:
            tail = ""
        return f"dockerd did not answer on {SOCKET} within {timeout_s:.0f} s:\n{tail}"
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
