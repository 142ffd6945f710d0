"""Real hugetlbfs fixtures for the model-store and shim tests (no tests here).

A store test takes ``hugestore``: under ``kernel_lock`` it grows the 2 MiB pool by POOL_PAGES,
mounts a private hugetlbfs on a tmp dir, and ALWAYS unmounts it and restores nr_hugepages
(even when the test fails). ``counters()`` snapshots every huge-page counter a leak would
show in."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, need

POOL_PAGES = 96  # 192 MiB
HP = "/sys/kernel/mm/hugepages/hugepages-2048kB"
NODE0 = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB"


def _read(p: str) -> int:
    with open(p) as fh:
        return int(fh.read().strip())


def _write(p: str, v: int) -> None:
    with open(p, "w") as fh:
        fh.write(f"{v}\n")


def counters() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k.startswith("HugePages_"):
                out[k] = int(v.split()[0])
    for f in ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages"):
        out[f"2M/{f}"] = _read(f"{HP}/{f}")
    if os.path.isdir(NODE0):
        for f in ("nr_hugepages", "free_hugepages"):
            out[f"node0/{f}"] = _read(f"{NODE0}/{f}")
    return out


@dataclass
class HugeStore:
    mount: Path
    baseline: dict[str, int]

    def files(self) -> list[str]:
        return sorted(os.listdir(self.mount))

    def assert_clean(self, expect_files: list[str] | None = None) -> None:
        """No leftover (partial) file and every counter back to the baseline."""
        assert self.files() == (expect_files or [])
        assert counters() == self.baseline


def _mount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize=2M,size={size}", "none",
                    str(path)], check=True, capture_output=True)


def _umount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        if subprocess.run(args, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.2)


def _can_hugetlb() -> bool:
    return os.geteuid() == 0 and os.path.isdir(HP)


@pytest.fixture
def hugestore(kernel_lock, tmp_path):
    need(_can_hugetlb(), "needs root and 2 MiB huge pages (hugetlbfs)")
    orig = _read(f"{HP}/nr_hugepages")
    mnt = tmp_path / "store"
    mnt.mkdir()
    mounted = False
    try:
        want = orig + POOL_PAGES
        for _ in range(5):  # the first write can under-allocate (design notes): retry
            _write(f"{HP}/nr_hugepages", want)
            if _read(f"{HP}/nr_hugepages") >= want:
                break
            time.sleep(0.2)
        assert _read(f"{HP}/free_hugepages") >= POOL_PAGES, "could not grow the huge-page pool"
        _mount(mnt, f"{POOL_PAGES * 2}M")
        mounted = True
        yield HugeStore(mnt, counters())
    finally:
        if mounted:
            _umount(mnt)
        _write(f"{HP}/nr_hugepages", orig)


@pytest.fixture
def small_mount(hugestore, tmp_path):
    """A second hugetlbfs mount limited to 2 pages (4 MiB)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount(mnt, "4M")
    try:
        yield mnt
    finally:
        _umount(mnt)


@pytest.fixture(scope="session")
def shim_so(tmp_path_factory) -> Path:
    """The shim, built by `hosttune shim build` (the CLI under test)."""
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("shim") / "libhosttune-shim.so"
    r = run_cli("shim", "build", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    return out


def py(code: str, *, preload: Path | None = None, timeout: float = 120):
    """Run Python code in a subprocess (optionally under the shim)."""
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LD_PRELOAD", None)
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
