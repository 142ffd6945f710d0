from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests import fakehost

# Fixtures shared by several test modules live in plugin modules (not test modules), so that no
# test module imports another; their helpers' asserts are rewritten like a test module's.
pytest_plugins = ["tests.models_fixtures"]
pytest.register_assert_rewrite("tests.models_helpers")

# The suite's own profile cache (hosttune caches validated profiles under
# $XDG_CACHE_HOME/hosttune/profiles): every test tree and profile file makes new entries, which
# must not pile up in the user's ~/.cache. Subprocesses (run_cli, ansible) inherit it; removed at
# the end of the session. USER_CACHE is the user's own, for what is meant to persist.
USER_CACHE = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
_SUITE_CACHE = tempfile.mkdtemp(prefix="hosttune-test-cache-")
os.environ["XDG_CACHE_HOME"] = _SUITE_CACHE


def _tmpfs_with_room(path: str, min_free: int = 4 << 30) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            fstype = {f[1]: f[2] for f in (ln.split() for ln in fh) if len(f) > 2}.get(path)
        st = os.statvfs(path)
    except OSError:
        return False
    return fstype == "tmpfs" and st.f_bavail * st.f_frsize >= min_free and \
        os.access(path, os.W_OK)


def pytest_configure(config: pytest.Config) -> None:
    # The fake trees are thousands of small files (an EPYC tree: 256 CPUs' sysfs): built on a
    # tmpfs they take 0.4 s, on an ext4 root 7 s (measured on a 2-vCPU VM whose root is ext4
    # with online discard), and the suite spent most of its time there. pytest's own numbered
    # directories move to /dev/shm when it is a tmpfs with room (documented
    # PYTEST_DEBUG_TEMPROOT); --basetemp, an explicit temproot and guest runs (HOSTTUNE_VM:
    # root file systems of 700 MB each) keep their place.
    if config.option.basetemp or "PYTEST_DEBUG_TEMPROOT" in os.environ or \
            os.environ.get("HOSTTUNE_VM"):
        return
    if _tmpfs_with_room("/dev/shm"):
        os.environ["PYTEST_DEBUG_TEMPROOT"] = "/dev/shm"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SUITE_CACHE, ignore_errors=True)
    dockerd = sys.modules.get("tests.dockerd")
    if dockerd is not None:  # only if a test asked for dockerd
        note = dockerd.stop_started_dockerd()
        if note:
            session.config.get_terminal_writer().line(f"note: {note}")

# In CI (.ci/run sets HOSTTUNE_CI_STRICT=1) a test that needs root, hugetlbfs or dockerd must
# run: its skip becomes a failure.
STRICT = os.environ.get("HOSTTUNE_CI_STRICT") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip locally when ``condition`` is false; fail in CI."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def ryzen(tmp_path: Path) -> Path:
    return fakehost.ryzen_9950x(tmp_path / "ryzen")


@pytest.fixture
def epyc(tmp_path: Path) -> Path:
    return fakehost.epyc_2s(tmp_path / "epyc")


@pytest.fixture
def vm(tmp_path: Path) -> Path:
    return fakehost.this_vm(tmp_path / "vm")


@pytest.fixture(params=["ryzen", "epyc", "vm"])
def any_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return {"ryzen": fakehost.ryzen_9950x, "epyc": fakehost.epyc_2s,
            "vm": fakehost.this_vm}[request.param](tmp_path / request.param)


@pytest.fixture
def kernel_lock():
    """Serialise tests that change global kernel state (huge-page pool, mounts, sysctls, swap)
    across concurrently running test processes."""
    import fcntl

    fd = os.open("/tmp/hosttune-kernel-tests.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, input_text: str | None = None,
            timeout: float = 120):
    """Run `python -m hosttune ARGS` in a subprocess against this checkout."""
    import subprocess
    import sys

    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("COLUMNS", "200")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "hosttune", *args], capture_output=True,
                          text=True, env=e, input=input_text, timeout=timeout, check=False)


@pytest.fixture
def cli():
    """In-process CLI runner: cli('audit', '--root', str(tree)) -> click Result."""
    from typer.testing import CliRunner

    from hosttune.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), env={"COLUMNS": "200"})

    return invoke
