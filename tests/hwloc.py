"""hwloc as the second opinion on topology: `lstopo --of xml` (Debian package hwloc) read
into the same shape as `hosttune topology --json`, and the two compared item by item; the
kernel's own files (sysfs, as `grep -H` lists them) are a third view of the same shape.

hwloc reads a fake tree through HWLOC_FSROOT (its Linux backend opens every sysfs and procfs
path relative to that root); the x86 backend is switched off then (HWLOC_COMPONENTS=-x86),
or it would add what CPUID says about the machine running the test.

Run as a script to print the agreement table for a tree or the live machine:
    python3 -m tests.hwloc [ROOT]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hosttune.host.parsers import format_cpulist, parse_cpulist

CpuSet = frozenset[int]


@dataclass(frozen=True)
class Topo:
    """What both tools must agree on: sets of CPUs per object."""

    pus: CpuSet
    packages: dict[int, CpuSet]  # os_index -> CPUs
    nodes: dict[int, CpuSet]  # NUMA node os_index -> CPUs
    cores: frozenset[CpuSet]  # one set per core: its SMT siblings
    l3: frozenset[CpuSet]  # one set per L3 domain


def have_lstopo() -> bool:
    return shutil.which("lstopo") is not None


def lstopo_xml(root: Path | None = None) -> str:
    env = dict(os.environ)
    if root is not None:
        env["HWLOC_FSROOT"] = str(root)
        env["HWLOC_COMPONENTS"] = "-x86"
    p = subprocess.run(["lstopo", "--of", "xml", "-"], capture_output=True, text=True,
                       env=env, timeout=120, check=True)
    return p.stdout


def parse_hwloc_cpuset(text: str) -> CpuSet:
    """hwloc's bitmap syntax: 32-bit hex groups, most significant first, separated by commas;
    an empty group is all zeros ("0xffffffff,,0xffffffff" = CPUs 0-31 and 64-95)."""
    out: set[int] = set()
    groups = text.split(",")
    for i, g in enumerate(reversed(groups)):
        value = int(g, 16) if g else 0
        out.update(i * 32 + b for b in range(32) if value >> b & 1)
    return frozenset(out)


def hwloc_view(xml: str) -> Topo:
    root = ET.fromstring(xml)
    objs = [(o.get("type"), o.get("os_index"), parse_hwloc_cpuset(o.get("cpuset") or "0x0"))
            for o in root.iter("object")]
    pus = frozenset(c for t, _i, cs in objs if t == "PU" for c in cs)
    return Topo(pus,
                {int(i or -1): cs for t, i, cs in objs if t == "Package"},
                {int(i or -1): cs for t, i, cs in objs if t == "NUMANode"},
                frozenset(cs for t, _i, cs in objs if t == "Core"),
                frozenset(cs for t, _i, cs in objs if t == "L3Cache"))


def hosttune_view(data: dict) -> Topo:
    packages: dict[int, CpuSet] = {}
    nodes: dict[int, CpuSet] = {}
    cores: set[CpuSet] = set()
    l3: set[CpuSet] = set()
    for p in data["packages"]:
        pcpus: set[int] = set()
        for n in p["nodes"]:
            ncpus = frozenset(parse_cpulist(n["cpus"]))
            nodes[n["id"]] = nodes.get(n["id"], frozenset()) | ncpus
            pcpus |= ncpus
            for d in n["l3_domains"]:
                cores.update(frozenset(c) for c in d["cores"])
                if d["index"] >= 0:  # the whole domain, also when it spans nodes
                    l3.add(frozenset(parse_cpulist(d["domain_cpus"])))
        packages[p["id"]] = frozenset(pcpus)
    return Topo(frozenset(c for cs in packages.values() for c in cs), packages, nodes,
                frozenset(cores), frozenset(l3))


# The sysfs files the kernel view reads; a real-boot stage lists them with `grep -H . FILES`
# ("path:value" lines), which works on sysfs where a copy with cp/tar does not (st_size 4096).
SYSFS_GLOBS = ("/sys/devices/system/cpu/online",
               "/sys/devices/system/cpu/cpu[0-9]*/topology/physical_package_id",
               "/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list",
               "/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/level",
               "/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/type",
               "/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/shared_cpu_list",
               "/sys/devices/system/node/node[0-9]*/cpulist")


def parse_grep_h(text: str) -> dict[str, str]:
    """`grep -H . FILES` output -> {path: value} (a value may itself contain ':')."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        path, sep, value = line.partition(":")
        if sep:
            out[path] = value.strip()
    return out


def read_sysfs(root: Path = Path("/")) -> dict[str, str]:
    """The SYSFS_GLOBS files under ``root`` (a fake tree or /), keyed by their path on the
    machine they describe: what `grep -H` lists on a booted guest."""
    out: dict[str, str] = {}
    for pattern in SYSFS_GLOBS:
        for p in sorted(root.glob(pattern.lstrip("/"))):
            out["/" + str(p.relative_to(root))] = p.read_text().strip()
    return out


def kernel_view(files: dict[str, str]) -> Topo:
    """The topology as the kernel's sysfs files state it (drivers/base/topology.c,
    cacheinfo.c, node.c): CPU -> physical_package_id, SMT siblings (thread_siblings_list),
    the shared_cpu_list of every unified level-3 cache index, and each node's cpulist."""
    cpu_re = re.compile(r"^/sys/devices/system/cpu/cpu(\d+)/(.*)$")
    per_cpu: dict[int, dict[str, str]] = {}
    for path, value in files.items():
        m = cpu_re.match(path)
        if m:
            per_cpu.setdefault(int(m.group(1)), {})[m.group(2)] = value
    online = frozenset(parse_cpulist(files["/sys/devices/system/cpu/online"]))
    packages: dict[int, set[int]] = {}
    cores: set[CpuSet] = set()
    l3: set[CpuSet] = set()
    for cpu in sorted(online):
        f = per_cpu.get(cpu, {})
        packages.setdefault(int(f["topology/physical_package_id"]), set()).add(cpu)
        cores.add(frozenset(parse_cpulist(f["topology/thread_siblings_list"])))
        for key, level in f.items():
            idx = key[:-len("/level")]
            if (key.startswith("cache/index") and key.endswith("/level") and level == "3"
                    and f.get(f"{idx}/type") == "Unified"):
                l3.add(frozenset(parse_cpulist(f[f"{idx}/shared_cpu_list"])))
    node_re = re.compile(r"^/sys/devices/system/node/node(\d+)/cpulist$")
    nodes = {int(m.group(1)): frozenset(parse_cpulist(v)) for p, v in files.items()
             if (m := node_re.match(p)) and v}
    return Topo(online, {k: frozenset(v) for k, v in packages.items()}, nodes,
                frozenset(cores), frozenset(l3))


def hosttune_json(root: Path | None = None) -> dict:
    argv = [sys.executable, "-m", "hosttune", "topology", "--json"]
    if root is not None:
        argv += ["--root", str(root)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(p.stdout)


def _fmt(sets: list[CpuSet]) -> str:
    return "; ".join(format_cpulist(sorted(s)) for s in sorted(sets, key=min))


def agreement(ours: Topo, theirs: Topo) -> list[tuple[str, str, str, bool]]:
    """(item, hosttune, hwloc, equal) rows."""
    def row(item: str, a: list[CpuSet], b: list[CpuSet]) -> tuple[str, str, str, bool]:
        return (item, f"{len(a)}: {_fmt(a)}", f"{len(b)}: {_fmt(b)}",
                sorted(map(sorted, a)) == sorted(map(sorted, b)))

    return [
        ("PUs (logical CPUs)", format_cpulist(sorted(ours.pus)),
         format_cpulist(sorted(theirs.pus)), ours.pus == theirs.pus),
        row("packages", list(ours.packages.values()), list(theirs.packages.values())),
        row("NUMA nodes", [ours.nodes[k] for k in sorted(ours.nodes)],
            [theirs.nodes[k] for k in sorted(theirs.nodes)]),
        (("NUMA node ids", str(sorted(ours.nodes)), str(sorted(theirs.nodes)),
          sorted(ours.nodes) == sorted(theirs.nodes))),
        row("cores (SMT siblings)", list(ours.cores), list(theirs.cores)),
        row("L3 domains", list(ours.l3), list(theirs.l3)),
    ]


def markdown(rows: list[tuple[str, str, str, bool]], width: int = 70,
             theirs: str = "lstopo --of xml") -> str:
    def cut(s: str) -> str:
        return s if len(s) <= width else s[:width - 1] + "…"

    out = [f"| item | hosttune topology --json | {theirs} | agree |",
           "|---|---|---|---|"]
    out += [f"| {i} | {cut(a)} | {cut(b)} | {'yes' if ok else '**NO**'} |"
            for i, a, b, ok in rows]
    return "\n".join(out)


if __name__ == "__main__":
    root_arg = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    rows_ = agreement(hosttune_view(hosttune_json(root_arg)), hwloc_view(lstopo_xml(root_arg)))
    print(markdown(rows_))
    sys.exit(0 if all(r[3] for r in rows_) else 1)
