"""What the model-store and shim tests share on a real hugetlbfs (the fixtures that use these
are in tests/models_fixtures.py): the 2 MiB pool's sysfs files, ``counters()`` (a snapshot of
every huge-page counter a leak would show in), ``HugeStore`` (a mount and its baseline), mount
helpers and ``py()`` (Python in a subprocess, optionally under the shim)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

POOL_PAGES = 96  # 192 MiB
HP = "/sys/kernel/mm/hugepages/hugepages-2048kB"
NODE0 = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB"


def read_int(p: str) -> int:
    with open(p) as fh:
        return int(fh.read().strip())


def write_int(p: str, v: int) -> None:
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
        out[f"2M/{f}"] = read_int(f"{HP}/{f}")
    if os.path.isdir(NODE0):
        for f in ("nr_hugepages", "free_hugepages"):
            out[f"node0/{f}"] = read_int(f"{NODE0}/{f}")
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


def mount_hugetlbfs(path: Path, size: str, pagesize: str = "2M") -> None:
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={pagesize},size={size}", "none",
                    str(path)], check=True, capture_output=True)


def umount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        if subprocess.run(args, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.2)


def can_hugetlb() -> bool:
    return os.geteuid() == 0 and os.path.isdir(HP)


def py(code: str, *, preload: Path | None = None, timeout: float = 120):
    """Run Python code in a subprocess (optionally under the shim)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LD_PRELOAD", None)
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
