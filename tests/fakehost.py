"""Fake host trees laid out exactly like real Linux paths (/proc, /sys, /etc), for --root tests.

Builders: ``ryzen_9950x`` (16C/32T, two CCDs, 128 GB, amd-pstate-epp), ``epyc_2s`` (2 sockets,
NUMA, 8 L3 domains per socket), ``this_vm`` (copied from the live /proc and /sys of the machine
running the tests). Each returns the tree's root; everything is plain files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GiB = 1024**3


def w(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    os.chmod(p, mode)
    return p


def cpulist(cpus: list[int]) -> str:
    from hosttune.host.parsers import format_cpulist

    return format_cpulist(cpus)


def meminfo(total: int, free: int | None = None, hp_total: int = 0, hp_free: int = 0,
            hp_size_kb: int = 2048, mlocked: int = 0, swap_total: int = 0) -> str:
    free = total // 2 if free is None else free
    kb = lambda b: b // 1024  # noqa: E731
    return (
        f"MemTotal:       {kb(total):>10} kB\n"
        f"MemFree:        {kb(free):>10} kB\n"
        f"MemAvailable:   {kb(free):>10} kB\n"
        f"Buffers:                 0 kB\n"
        f"Cached:         {kb(total) // 10:>10} kB\n"
        f"SwapTotal:      {kb(swap_total):>10} kB\n"
        f"SwapFree:       {kb(swap_total):>10} kB\n"
        f"Mlocked:        {kb(mlocked):>10} kB\n"
        f"AnonHugePages:           0 kB\n"
        f"HugePages_Total:   {hp_total}\n"
        f"HugePages_Free:    {hp_free}\n"
        f"HugePages_Rsvd:        0\n"
        f"HugePages_Surp:        0\n"
        f"Hugepagesize:       {hp_size_kb} kB\n"
        f"Hugetlb:        {hp_total * hp_size_kb:>10} kB\n"
    )


PROC_SYS_DEFAULTS = {
    "vm/swappiness": "60", "vm/zone_reclaim_mode": "0", "vm/overcommit_memory": "0",
    "vm/vfs_cache_pressure": "100", "vm/dirty_ratio": "20", "vm/dirty_background_ratio": "10",
    "vm/max_map_count": "65530", "vm/nr_hugepages": "0", "vm/compact_memory": "",
    "vm/drop_caches": "", "kernel/numa_balancing": "0",
}

LIMITS_TEMPLATE = (
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max cpu time              unlimited            unlimited            seconds   \n"
    "Max file size             unlimited            unlimited            bytes     \n"
    "Max open files            1048576              1048576              files     \n"
    "Max locked memory         {soft:<20} {hard:<20} bytes     \n"
    "Max address space         unlimited            unlimited            bytes     \n"
)


def limits_text(soft: int | None, hard: int | None) -> str:
    f = lambda v: "unlimited" if v is None else str(v)  # noqa: E731
    return LIMITS_TEMPLATE.format(soft=f(soft), hard=f(hard))


class TreeBuilder:
    """Build a host tree piece by piece."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        return w(self.root, path, text, mode)

    def base_etc(self, fstab: str | None = None) -> None:
        self.write("/etc/fstab", fstab if fstab is not None else (
            "# /etc/fstab: static file system information.\n"
            "UUID=1111-aaaa / ext4 errors=remount-ro 0 1\n"
            "UUID=2222-bbbb /boot/efi vfat umask=0077 0 1\n"))
        self.write("/etc/sysctl.d/README.sysctl", "see sysctl.d(5)\n")
        (self.root / "etc/sysctl.d/99-sysctl.conf").symlink_to("../sysctl.conf")
        self.write("/etc/sysctl.conf", "# /etc/sysctl.conf - Configuration file\n"
                   "#kernel.domainname = example.com\n")
        self.write("/etc/security/limits.conf", "# /etc/security/limits.conf\n#<domain> <type> "
                   "<item> <value>\n# End of file\n")
        (self.root / "etc/security/limits.d").mkdir(parents=True, exist_ok=True)
        self.write("/etc/group", "root:x:0:\ndocker:x:998:\ninference:x:997:\n")
        self.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
        self.write("/etc/os-release", 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n')
        # hosttune installed in the tree (pip's console script): what the boot unit runs
        self.write("/usr/local/bin/hosttune", "#!/usr/bin/python3\nimport sys\n"
                   "from hosttune.cli import main\nsys.exit(main())\n", 0o755)
        (self.root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
        (self.root / "var/lib").mkdir(parents=True, exist_ok=True)

    def proc(self, mem_total: int, *, swaps: list[tuple[str, str, int]] | None = None,
             cmdline: str = "BOOT_IMAGE=/vmlinuz root=UUID=1111-aaaa ro quiet",
             mounts: list[str] | None = None) -> None:
        swap_total = sum(s for _, _, s in swaps or [])
        self.write("/proc/meminfo", meminfo(mem_total, swap_total=swap_total))
        lines = ["Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"]
        for i, (path, kind, size) in enumerate(swaps or []):
            lines.append(f"{path:<40}{kind:<16}{size // 1024:<16}0\t\t-{i + 2}")
        self.write("/proc/swaps", "\n".join(lines) + "\n")
        self.write("/proc/cmdline", cmdline + "\n")
        mi = mounts or []
        base = [
            "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
            "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw",
            "24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:3 - sysfs sysfs rw",
            "25 22 0:23 / /dev/hugepages rw,relatime shared:4 - hugetlbfs hugetlbfs rw,pagesize=2M",
        ]
        self.write("/proc/self/mountinfo", "\n".join(base + mi) + "\n")
        for k, v in PROC_SYS_DEFAULTS.items():
            self.write(f"/proc/sys/{k}", v + "\n")
        self.write("/proc/1/comm", "systemd\n")
        self.write("/proc/1/limits", limits_text(8 * 1024 * 1024, 8 * 1024 * 1024))

    def process(self, pid: int, comm: str, memlock: tuple[int | None, int | None]) -> None:
        self.write(f"/proc/{pid}/comm", comm + "\n")
        self.write(f"/proc/{pid}/limits", limits_text(*memlock))
        self.write(f"/proc/{pid}/status", f"Name:\t{comm}\nVmLck:\t       0 kB\n")

    def cpus(self, topo: list[tuple[int, int, int, int, list[int], list[int]]],
             *, cpufreq: str | None = None) -> None:
        """topo: (cpu, package, core_id, node, siblings, l3_shared)."""
        all_ids = [t[0] for t in topo]
        self.write("/sys/devices/system/cpu/online", cpulist(all_ids) + "\n")
        self.write("/sys/devices/system/cpu/possible", cpulist(all_ids) + "\n")
        self.write("/sys/devices/system/cpu/isolated", "\n")
        for cpu, pkg, core, _node, sibs, l3 in topo:
            base = f"/sys/devices/system/cpu/cpu{cpu}"
            self.write(f"{base}/topology/physical_package_id", f"{pkg}\n")
            self.write(f"{base}/topology/core_id", f"{core}\n")
            self.write(f"{base}/topology/thread_siblings_list", cpulist(sibs) + "\n")
            self.write(f"{base}/topology/core_cpus_list", cpulist(sibs) + "\n")
            for idx, (lvl, shared) in enumerate([(1, sibs), (2, sibs), (3, l3)]):
                self.write(f"{base}/cache/index{idx + (1 if idx else 0)}/level", f"{lvl}\n")
                self.write(f"{base}/cache/index{idx + (1 if idx else 0)}/shared_cpu_list",
                           cpulist(shared) + "\n")
            if cpufreq:
                pol = f"/sys/devices/system/cpu/cpufreq/policy{cpu}"
                self.write(f"{pol}/scaling_driver", cpufreq + "\n")
                self.write(f"{pol}/scaling_governor", "powersave\n")
                self.write(f"{pol}/scaling_available_governors", "performance powersave\n")
                self.write(f"{pol}/affected_cpus", f"{cpu}\n")
                self.write(f"{pol}/related_cpus", f"{cpu}\n")
                self.write(f"{pol}/scaling_cur_freq", "4300000\n")
                self.write(f"{pol}/cpuinfo_max_freq", "5752000\n")
                if cpufreq in ("amd-pstate-epp", "intel_pstate"):
                    self.write(f"{pol}/energy_performance_preference", "balance_performance\n")
                    self.write(f"{pol}/energy_performance_available_preferences",
                               "default performance balance_performance balance_power power\n")

    def nodes(self, nodes: dict[int, tuple[list[int], int]],
              hugepage_sizes_kb: tuple[int, ...] = (2048, 1048576)) -> None:
        """nodes: {id: (cpus, mem_total_bytes)}."""
        self.write("/sys/devices/system/node/online", cpulist(list(nodes)) + "\n")
        self.write("/sys/devices/system/node/has_memory", cpulist(list(nodes)) + "\n")
        for nid, (cpus, mem) in nodes.items():
            nb = f"/sys/devices/system/node/node{nid}"
            self.write(f"{nb}/cpulist", cpulist(cpus) + "\n")
            self.write(f"{nb}/meminfo", f"Node {nid} MemTotal:       {mem // 1024} kB\n"
                       f"Node {nid} MemFree:        {mem // 2048} kB\n"
                       f"Node {nid} HugePages_Total:     0\nNode {nid} HugePages_Free:      0\n"
                       f"Node {nid} HugePages_Surp:      0\n")
            for kb in hugepage_sizes_kb:
                hb = f"{nb}/hugepages/hugepages-{kb}kB"
                for f in ("nr_hugepages", "free_hugepages", "surplus_hugepages"):
                    self.write(f"{hb}/{f}", "0\n")
        for kb in hugepage_sizes_kb:
            hb = f"/sys/kernel/mm/hugepages/hugepages-{kb}kB"
            for f in ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
                      "nr_overcommit_hugepages", "nr_hugepages_mempolicy"):
                self.write(f"{hb}/{f}", "0\n")
        self.write("/sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n")
        self.write("/sys/kernel/mm/transparent_hugepage/defrag",
                   "always defer defer+madvise [madvise] never\n")

    def cpuinfo(self, vendor: str, model: str, ncpu: int) -> None:
        self.write("/proc/cpuinfo", "".join(
            f"processor\t: {i}\nvendor_id\t: {vendor}\nmodel name\t: {model}\n"
            f"cpu MHz\t\t: 4300.000\n\n" for i in range(ncpu)))


def ryzen_9950x(root: Path, *, swap: bool = True) -> Path:
    """16 cores / 32 threads; CPUs 0-15 first threads, 16-31 their SMT siblings; CCD0 = cores
    0-7 (+16-23), CCD1 = cores 8-15 (+24-31); one NUMA node; 128 GB; amd-pstate-epp."""
    b = TreeBuilder(root)
    topo = []
    for cpu in range(32):
        core = cpu % 16
        sibs = [core, core + 16]
        ccd = core // 8
        l3 = list(range(ccd * 8, ccd * 8 + 8)) + list(range(16 + ccd * 8, 16 + ccd * 8 + 8))
        topo.append((cpu, 0, core, 0, sibs, l3))
    b.base_etc(fstab=(
        "# /etc/fstab: static file system information.\n"
        "UUID=1111-aaaa / ext4 errors=remount-ro 0 1\n"
        "UUID=2222-bbbb /boot/efi vfat umask=0077 0 1\n"
        + ("/swap.img none swap sw 0 0\n" if swap else "")
        + "# backup disk, not swap related\n"
        "UUID=3333-cccc /mnt/backup ext4 defaults,nofail 0 2\n"))
    b.proc(128 * GiB, swaps=[("/swap.img", "file", 8 * GiB)] if swap else [])
    b.cpus(topo, cpufreq="amd-pstate-epp")
    b.nodes({0: (list(range(32)), 128 * GiB)})
    b.cpuinfo("AuthenticAMD", "AMD Ryzen 9 9950X 16-Core Processor", 32)
    b.process(1200, "dockerd", (8 * 1024 * 1024, 8 * 1024 * 1024))
    b.process(1100, "containerd", (8 * 1024 * 1024, 8 * 1024 * 1024))
    return root


def epyc_2s(root: Path) -> Path:
    """2 sockets x 32 cores x 2 threads = 128 CPUs; CPUs 0-63 first threads (0-31 socket 0,
    32-63 socket 1), 64-127 siblings; 4 cores per L3 (CCX) -> 16 L3 domains; NUMA node per
    socket, 256 GB each; acpi-cpufreq without EPP."""
    b = TreeBuilder(root)
    topo = []
    for cpu in range(128):
        core = cpu % 64
        pkg = core // 32
        sibs = [core, core + 64]
        ccx = core // 4
        l3 = list(range(ccx * 4, ccx * 4 + 4)) + list(range(64 + ccx * 4, 64 + ccx * 4 + 4))
        topo.append((cpu, pkg, core % 32, pkg, sibs, l3))
    b.base_etc()
    b.proc(512 * GiB, swaps=[("/dev/nvme0n1p3", "partition", 16 * GiB)])
    b.write("/etc/fstab", (root / "etc/fstab").read_text()
            + "UUID=4444-dddd none swap sw,pri=5 0 0\n")
    b.cpus(topo, cpufreq="acpi-cpufreq")
    n0 = [c for c in range(128) if (c % 64) < 32]
    n1 = [c for c in range(128) if (c % 64) >= 32]
    b.nodes({0: (n0, 256 * GiB), 1: (n1, 256 * GiB)})
    b.cpuinfo("AuthenticAMD", "AMD EPYC 9354 32-Core Processor", 128)
    return root


def this_vm(root: Path) -> Path:
    """A tree copied from the live machine's /proc and /sys (the files hosttune reads)."""
    b = TreeBuilder(root)
    b.base_etc()
    for f in ("/proc/meminfo", "/proc/swaps", "/proc/cmdline", "/proc/cpuinfo",
              "/proc/self/mountinfo"):
        try:
            b.write(f, Path(f).read_text())
        except OSError:
            pass
    for k in PROC_SYS_DEFAULTS:
        src = Path("/proc/sys") / k
        try:
            b.write(f"/proc/sys/{k}", src.read_text() if os.access(src, os.R_OK) else "")
        except OSError:
            b.write(f"/proc/sys/{k}", "")
    b.write("/proc/1/comm", "init\n")
    b.write("/proc/1/limits", Path("/proc/self/limits").read_text())
    sysdirs = ["/sys/devices/system/cpu", "/sys/devices/system/node", "/sys/kernel/mm/hugepages",
               "/sys/kernel/mm/transparent_hugepage"]
    for d in sysdirs:
        _copy_sys(Path(d), root / d.lstrip("/"))
    return root


def _copy_sys(src: Path, dst: Path, depth: int = 0) -> None:
    if depth > 6 or not src.exists():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        if entry.is_symlink():
            continue
        s = Path(entry.path)
        if entry.is_dir():
            if entry.name in ("power", "subsystem", "driver", "firmware_node", "hotplug"):
                continue
            _copy_sys(s, dst / entry.name, depth + 1)
        elif entry.is_file() and os.access(s, os.R_OK):
            try:
                (dst / entry.name).write_text(s.read_text())
            except OSError:
                continue
    shutil.copymode if False else None  # noqa: B018 (modes are irrelevant in fixtures)
