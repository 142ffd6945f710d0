"""Pure parsers for the files the monitor reads (tested on literal contents)."""

from __future__ import annotations

import re

_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def parse_cpuinfo_mhz(text: str) -> dict[int, float]:
    """/proc/cpuinfo -> {processor: "cpu MHz"}. On x86 the value is the kernel's last
    APERF/MPERF estimate (arch/x86/kernel/cpu/proc.c), also present without cpufreq; other
    architectures may lack the line, which leaves the CPU out."""
    out: dict[int, float] = {}
    cur: int | None = None
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "processor":
            try:
                cur = int(val.strip())
            except ValueError:
                cur = None
        elif key == "cpu MHz" and cur is not None:
            try:
                out[cur] = float(val.strip())
            except ValueError:
                continue
    return out


def parse_status_vmlck(text: str) -> int | None:
    """/proc/<pid>/status -> VmLck in bytes (None for kernel threads, which have no Vm* lines)."""
    for line in text.splitlines():
        if line.startswith("VmLck:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def parse_flat_keyed(text: str) -> dict[str, int]:
    """cgroup 'key value' files (cpu.stat, memory.stat) -> {key: int}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_pids(text: str) -> list[int]:
    """cgroup.procs -> pids."""
    return [int(t) for t in text.split() if t.isdigit()]


def container_id_from_dirname(name: str) -> str | None:
    """'docker-<64 hex>.scope' (systemd driver) or '<64 hex>' (cgroupfs driver) -> the id."""
    if name.startswith("docker-") and name.endswith(".scope"):
        name = name[len("docker-"):-len(".scope")]
    return name if _CONTAINER_ID.fullmatch(name) else None


def parse_mount_size(opts: dict[str, str], page_size: int, mem_total: int) -> int | None:
    """hugetlbfs 'size=' option -> bytes. The kernel accepts a byte count with K/M/G suffix or
    a percentage of the huge-page pool; the percentage is of pages of this mount's size, which
    we cannot resolve without the pool (fs/hugetlbfs/inode.c hugetlbfs_size_to_hpages)."""
    raw = opts.get("size")
    if not raw:
        return None
    if raw.endswith("%"):
        return None
    m = re.fullmatch(r"(\d+)([kKmMgGtT]?)", raw)
    if not m:
        return None
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(m.group(1)) * mult


def parse_pagesize_opt(value: str | None, default: int) -> int:
    """hugetlbfs 'pagesize=2M' (or 'pagesize=2048k') -> bytes; default when absent."""
    if not value:
        return default
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    if not m:
        return default
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * mult
