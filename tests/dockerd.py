"""Start Debian's dockerd for tests when none answers; it stays up for the next test and is
stopped at the end of the session (conftest.pytest_sessionfinish) by the session that started
it, with the firewall rules and the docker0 bridge it created removed and the images the tests
built deleted - unless another test session still uses it (then it says so and leaves it).

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
# held shared by every test session that uses the daemon (whoever started it)
USERS = "/tmp/hosttune-dockerd.users"
IMAGE_PREFIX = "hosttune-e2e"  # images the tests build (tests/test_containers_e2e.py)
# extra dockerd arguments (tests/test_dockerd_cleanup.py: its own socket, data-root, exec-root)
EXTRA_ARGS: list[str] = []

_started: subprocess.Popen[bytes] | None = None
_users_fd: int | None = None
_firewall_before: bytes | None = None
_bridge_before = True


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
    global _started, _users_fd, _firewall_before, _bridge_before
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _users_fd is None:
            _users_fd = os.open(USERS, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(_users_fd, fcntl.LOCK_SH)
        if _answers():
            return None
        _firewall_before = _iptables_save()
        _bridge_before = has_bridge()
        with open(LOG, "ab") as log:
            _started = subprocess.Popen([dockerd, *EXTRA_ARGS], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log, start_new_session=True,
                                        close_fds=True)
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


def has_bridge() -> bool:
    """docker0 in this process's network namespace (ip asks the kernel over netlink;
    /sys/class/net shows the namespace /sys was mounted in, which may be another one)."""
    r = subprocess.run(["ip", "-o", "link", "show", "dev", "docker0"], capture_output=True,
                       timeout=30, check=False)
    return r.returncode == 0


def _iptables_save() -> bytes | None:
    exe = shutil.which("iptables-save")
    if exe is None:
        return None
    r = subprocess.run([exe], capture_output=True, timeout=60, check=False)
    return r.stdout if r.returncode == 0 else None


def _tables(save: bytes) -> list[bytes]:
    return [ln[1:].strip() for ln in save.splitlines() if ln.startswith(b"*")]


def restore_input(before: bytes, now: bytes | None) -> bytes:
    """What iptables-restore needs to bring the firewall back to ``before``: the saved tables,
    plus an empty section for each table dockerd created (iptables-save lists only tables that
    exist, and iptables-restore flushes only the tables it is given; without this the nat and
    filter DOCKER chains of a daemon started on a firewall-less host would stay)."""
    new = [t for t in _tables(now or b"") if t not in _tables(before)]
    return before + b"".join(b"*" + t + b"\nCOMMIT\n" for t in new)


def stop_started_dockerd() -> str | None:
    """End of session: stop the dockerd this session started and undo what it left (its
    iptables chains, the docker0 bridge, the test images). Returns a note when something
    stays: another session still uses the daemon, or a step failed."""
    global _started, _users_fd
    if _users_fd is None:
        return None
    try:
        if _started is None:
            return None
        try:  # shared -> exclusive: no other test session holds the daemon
            fcntl.flock(_users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"dockerd (pid {_started.pid}) left running: another test session uses it"
        notes: list[str] = []
        try:
            c = _client()
            try:
                for img in c.images.list():
                    if any(t.startswith(IMAGE_PREFIX) for t in img.tags):
                        c.images.remove(img.id, force=True)
                c.images.prune(filters={"dangling": True})
            finally:
                c.close()
        except Exception as err:
            notes.append(f"test images not removed: {err}")
        _started.terminate()
        try:
            _started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _started.kill()
            _started.wait(timeout=30)
        if _firewall_before is not None and shutil.which("iptables-restore"):
            r = subprocess.run(["iptables-restore"],
                               input=restore_input(_firewall_before, _iptables_save()),
                               capture_output=True, timeout=60, check=False)
            if r.returncode != 0:
                notes.append(f"iptables not restored: {r.stderr.decode(errors='replace')}")
        if not _bridge_before and has_bridge():
            r = subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True,
                               timeout=30, check=False)
            if r.returncode != 0:
                notes.append(f"docker0 not removed: {r.stderr.decode(errors='replace')}")
        _started = None
        return "; ".join(notes) or None
    finally:
        fcntl.flock(_users_fd, fcntl.LOCK_UN)
        os.close(_users_fd)
        _users_fd = None
