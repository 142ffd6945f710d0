"""`hosttune topology --json` against hwloc's `lstopo --of xml` (the consumer that knows
topology best): packages, NUMA nodes, cores with their SMT siblings and L3 domains must be the
same sets of CPUs, on every fake tree (hwloc reads it through HWLOC_FSROOT) and on the live
machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fakehost
from tests.conftest import need
from tests.hwloc import (
    agreement,
    have_lstopo,
    hosttune_json,
    hosttune_view,
    hwloc_view,
    kernel_view,
    lstopo_xml,
    parse_grep_h,
    parse_hwloc_cpuset,
    read_sysfs,
)

TREES = {
    "ryzen-9950x": fakehost.ryzen_9950x,
    "epyc-2s": fakehost.epyc_2s,
    "this-vm": fakehost.this_vm,
    "qemu-numa-shared-l3": fakehost.qemu_numa_guest,
    "qemu-numa-l3-per-node": lambda r: fakehost.qemu_numa_guest(r, l3_per_node=True),
}


def _disagreements(root: Path | None) -> list[tuple[str, str, str, bool]]:
    rows = agreement(hosttune_view(hosttune_json(root)), hwloc_view(lstopo_xml(root)))
    assert len(rows) == 6
    return [r for r in rows if not r[3]]


@pytest.mark.parametrize("name", sorted(TREES))
def test_hosttune_agrees_with_hwloc_on_fake_trees(tmp_path, name):
    need(have_lstopo(), "lstopo (Debian package hwloc)")
    root = TREES[name](tmp_path / name)
    assert _disagreements(root) == []


@pytest.mark.parametrize("name", sorted(TREES))
def test_hosttune_agrees_with_the_kernel_files_on_fake_trees(tmp_path, name):
    # the third view the real-boot scenario uses: sysfs as the kernel writes it
    root = TREES[name](tmp_path / name)
    rows = agreement(hosttune_view(hosttune_json(root)), kernel_view(read_sysfs(root)))
    assert [r for r in rows if not r[3]] == []


def test_kernel_view_reads_grep_output():
    # `grep -H . FILES` as a guest stage runs it: CPUs 0-3, siblings (0,1) (2,3), one L3
    # shared by all, and an L2 per core that must not count as an L3 domain
    lines = ["/sys/devices/system/cpu/online:0-3"]
    for cpu in range(4):
        b = f"/sys/devices/system/cpu/cpu{cpu}"
        sib = "0-1" if cpu < 2 else "2-3"
        lines += [f"{b}/topology/physical_package_id:0", f"{b}/topology/thread_siblings_list:{sib}",
                  f"{b}/cache/index2/level:2", f"{b}/cache/index2/type:Unified",
                  f"{b}/cache/index2/shared_cpu_list:{sib}", f"{b}/cache/index3/level:3",
                  f"{b}/cache/index3/type:Unified", f"{b}/cache/index3/shared_cpu_list:0-3"]
    lines += ["/sys/devices/system/node/node0/cpulist:0-1",
              "/sys/devices/system/node/node1/cpulist:2-3"]
    view = kernel_view(parse_grep_h("\n".join(lines)))
    assert view.pus == set(range(4)) and view.packages == {0: frozenset(range(4))}
    assert view.cores == {frozenset({0, 1}), frozenset({2, 3})}
    assert view.l3 == {frozenset(range(4))}
    assert view.nodes == {0: frozenset({0, 1}), 1: frozenset({2, 3})}


def test_hwloc_reads_the_tree_not_the_machine(tmp_path):
    # the EPYC tree has 128 CPUs and 2 packages; this machine has neither
    need(have_lstopo(), "lstopo (Debian package hwloc)")
    view = hwloc_view(lstopo_xml(fakehost.epyc_2s(tmp_path / "e")))
    assert len(view.pus) == 128 and len(view.packages) == 2 and len(view.l3) == 16
    assert len(view.cores) == 64 and all(len(c) == 2 for c in view.cores)


def test_shared_l3_across_numa_nodes_counts_once(tmp_path):
    # QEMU's default L3 is per socket: with two -numa nodes it serves both (hwloc: one L3)
    need(have_lstopo(), "lstopo (Debian package hwloc)")
    root = fakehost.qemu_numa_guest(tmp_path / "g")
    data = hosttune_json(root)
    assert hosttune_view(data).l3 == {frozenset(range(8))}
    assert hwloc_view(lstopo_xml(root)).l3 == {frozenset(range(8))}
    pieces = [d for p in data["packages"] for n in p["nodes"] for d in n["l3_domains"]]
    assert [(d["index"], d["cpus"], d["domain_cpus"]) for d in pieces] == [
        (0, "0-3", "0-7"), (0, "4-7", "0-7")]


def test_hosttune_agrees_with_hwloc_live():
    need(have_lstopo(), "lstopo (Debian package hwloc)")
    assert _disagreements(None) == []


def test_agreement_finds_a_difference():
    a = hosttune_view({"packages": [{"id": 0, "nodes": [{"id": 0, "cpus": "0-3", "l3_domains": [
        {"index": 0, "cpus": "0-3", "domain_cpus": "0-3", "cores": [[0, 2], [1, 3]]}]}]}]})
    b = hosttune_view({"packages": [{"id": 0, "nodes": [{"id": 0, "cpus": "0-3", "l3_domains": [
        {"index": 0, "cpus": "0-3", "domain_cpus": "0-3", "cores": [[0, 1], [2, 3]]}]}]}]})
    assert [r[0] for r in agreement(a, b) if not r[3]] == ["cores (SMT siblings)"]


def test_hwloc_cpuset_syntax():
    assert parse_hwloc_cpuset("0x00000003") == {0, 1}
    assert parse_hwloc_cpuset("0xffffffff,,0xffffffff") == set(range(32)) | set(range(64, 96))
    assert parse_hwloc_cpuset("0x1,0x0") == {32}
