"""Real hugetlbfs fixtures for the model-store and shim tests, registered by tests/conftest.py
(pytest_plugins): test modules request them by name and import nothing from here.

``hugestore``: under ``kernel_lock`` it grows the 2 MiB pool by POOL_PAGES, mounts a private
hugetlbfs on a tmp dir, and ALWAYS unmounts it and restores nr_hugepages (even when the test
fails). ``small_mount``: a second mount of 2 pages. ``shim_so``: the shim, built once by the
CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import need, run_cli
from tests.models_helpers import (
    HP,
    POOL_PAGES,
    HugeStore,
    can_hugetlb,
    counters,
    mount_hugetlbfs,
    read_int,
    umount,
    write_int,
)


@pytest.fixture
def hugestore(kernel_lock, tmp_path):
    """A private 2 MiB hugetlbfs of POOL_PAGES pages, grown into the pool for this test."""
    need(can_hugetlb(), "needs root and 2 MiB huge pages (hugetlbfs)")
    orig = read_int(f"{HP}/nr_hugepages")
    mnt = tmp_path / "store"
    mnt.mkdir()
    mounted = False
    try:
        want = orig + POOL_PAGES
        for _ in range(5):  # the first write can under-allocate (design notes): retry
            write_int(f"{HP}/nr_hugepages", want)
            if read_int(f"{HP}/nr_hugepages") >= want:
                break
            time.sleep(0.2)
        assert read_int(f"{HP}/free_hugepages") >= POOL_PAGES, "could not grow the huge-page pool"
        mount_hugetlbfs(mnt, f"{POOL_PAGES * 2}M")
        mounted = True
        yield HugeStore(mnt, counters())
    finally:
        if mounted:
            umount(mnt)
        write_int(f"{HP}/nr_hugepages", orig)


@pytest.fixture
def small_mount(hugestore, tmp_path):
    """A second hugetlbfs mount limited to 2 pages (4 MiB)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount_hugetlbfs(mnt, "4M")
    try:
        yield mnt
    finally:
        umount(mnt)


@pytest.fixture(scope="session")
def shim_so(tmp_path_factory) -> Path:
    """The shim, built by `hosttune shim build` (the CLI under test)."""
    out = tmp_path_factory.mktemp("shim") / "libhosttune-shim.so"
    r = run_cli("shim", "build", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    return out
