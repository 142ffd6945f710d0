"""Fixtures for the real-boot tests (pytest -m vm tests/vm; see README "Real-boot tests").

They run when HOSTTUNE_VM=1 (.ci/run sets it): each needs root, qemu-system-x86_64, mmdebstrap
and e2fsprogs, builds (once, cached under /var/cache/hosttune-vm) a Debian 12 image and boots it
under TCG for several minutes. Without HOSTTUNE_VM=1 they skip (fail in CI strict mode)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.vm import guest as g


@dataclass
class VmEnv:
    base: Path          # the cached rootfs tarball
    wheels: Path        # this checkout as wheels (+ deps)
    work: Path          # scratch: trees and disks (removed at the end)
    logs: Path          # console logs and /ht/out copies of every boot (kept)

    def tree(self, name: str, *, hosttune: bool = True) -> g.Tree:
        d = self.work / name / "tree"
        shutil.rmtree(d, ignore_errors=True)
        t = g.Tree.extract(self.base, d)
        if hosttune:
            t.install_hosttune(self.wheels)
        return t

    def guest(self, name: str, tree: g.Tree, *, partitioned: bool = False,
              grub: bool = False, drop_tree: bool = True, **qemu: Any) -> g.Guest:
        """``qemu``: Guest's machine settings (smp, mem_mb, machine_args, cpu, cmdline)."""
        disk = tree.make_disk(self.work / name / "disk.img", partitioned=partitioned)
        if drop_tree:
            shutil.rmtree(tree.path, ignore_errors=True)
        return g.Guest(disk, self.logs / name, name=name, grub=grub, **qemu)


@pytest.fixture(scope="session")
def vm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmEnv]:
    need(os.environ.get("HOSTTUNE_VM") == "1",
         "real-boot tests run with HOSTTUNE_VM=1 (minutes of QEMU boots)")
    need(os.geteuid() == 0, "real-boot tests need root (chroot, mkfs.ext4 -d of a rootfs)")
    missing = g.missing_tools()
    need(not missing, f"missing {', '.join(missing)} "
         "(apt-get install qemu-system-x86 mmdebstrap e2fsprogs)")
    # the pid too: two lanes started in the same second must not share (and remove) a dir
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    logs = Path(os.environ.get("HOSTTUNE_VM_LOGS") or f"/var/tmp/hosttune-vm-logs/{stamp}")
    work = Path(os.environ.get("HOSTTUNE_VM_WORK") or f"/var/tmp/hosttune-vm-work/{stamp}")
    logs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    base = g.base_rootfs()
    wheels = g.wheelhouse(tmp_path_factory.mktemp("wheels") / "wh")
    try:
        yield VmEnv(base, wheels, work, logs)
    finally:
        if os.environ.get("HOSTTUNE_VM_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_scenario_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """A scenario holds the VM lock across its boots (its disk's state between two boots is
    part of what it checks, and another engineer's guest must not slow it down midway)."""
    if "vm_env" not in request.fixturenames:
        yield
        return
    with g.vm_lock():
        yield


StageCheck = Callable[[g.BootResult], None]


def stage_ok(r: g.BootResult) -> None:
    """The stage script itself must have exited 0 (its own `set -e` / explicit checks)."""
    assert r.rc == 0, f"stage exit {r.rc} (console {r.log}):\n{r.out.get('stage.log', '')[-3000:]}"
