"""HugeTLB Vmemmap Optimization, measured: the struct-page memory the kernel really frees.

The kernel counts the pages that hold struct pages (the memmap) in /proc/vmstat
``nr_memmap_pages`` (Linux 6.11+, mm/vmstat.c; the boot-time part is ``nr_memmap_boot_pages``).
With vm.hugetlb_optimize_vmemmap=1 a huge page allocated from then on has its vmemmap remapped
onto one page and the rest freed (mm/hugetlb_vmemmap.c, ``memmap_pages_add(-n)``); freeing the
huge page restores them first (``hugetlb_vmemmap_restore_folio`` allocates them again, +n).

Each round grows the 2 MiB pool by ``pages`` (global counter), shrinks it back and reads the
counter around both, with HVO off and on alternately. The shrink side is the measure: the
pages the kernel allocates to restore the vmemmap are exactly what HVO had saved while the
pool existed. The grow side is reported too, but on a VM whose memory is initialised lazily
(this one boots with deferred_init=lazy: node0 first shows a few GB of ~24) the first touch of
memory adds memmap pages of its own during the same window, so it is the noisier number.

Root; restores the pool and the sysctl it found, even on error. Callers hold the kernel-test
lock on a shared machine."""

from __future__ import annotations

import statistics
import time

import msgspec

from hosttune.errors import HostError
from hosttune.host import Host
from hosttune.tunables.hugepages import (
    BASE_PAGE,
    HVO_PATH,
    global_file,
    read_int,
    vmemmap_saved_per_page,
)

VMSTAT = "/proc/vmstat"
PAGE_2M = 2 * 1024**2


def memmap_pages(host: Host) -> int | None:
    """/proc/vmstat nr_memmap_pages (None before Linux 6.11)."""
    for line in (host.read_text(VMSTAT) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == "nr_memmap_pages" and value.strip().isdigit():
            return int(value)
    return None


def _settled(host: Host, timeout_s: float = 5.0) -> int:
    """The counter once two reads 0.2 s apart agree (frees and page reporting trail the write)."""
    last = memmap_pages(host)
    assert last is not None
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        time.sleep(0.2)
        now = memmap_pages(host)
        assert now is not None
        if now == last:
            return now
        last = now
    return last


class Round(msgspec.Struct, frozen=True):
    hvo: bool
    allocated: int  # huge pages the kernel gave
    grow_freed_bytes: int  # memmap freed while the pool grew (negative: it grew)
    shrink_restored_bytes: int  # memmap allocated while the pool shrank back


class HvoMeasurement(msgspec.Struct, frozen=True):
    pages: int
    computed_bytes: int  # vmemmap_saved_per_page * pages
    rounds: list[Round]

    def _median(self, hvo: bool, attr: str) -> float:
        vals = [getattr(r, attr) for r in self.rounds if r.hvo == hvo]
        return statistics.median(vals) if vals else 0.0

    @property
    def measured_bytes(self) -> float:
        """Restored on shrink with HVO on, less the same with it off (0 on a quiet kernel)."""
        return (self._median(True, "shrink_restored_bytes")
                - self._median(False, "shrink_restored_bytes"))

    @property
    def grow_measured_bytes(self) -> float:
        return self._median(True, "grow_freed_bytes") - self._median(False, "grow_freed_bytes")


def measure(host: Host, pages: int = 256, rounds: int = 3) -> HvoMeasurement:
    """Grow and shrink the 2 MiB pool by ``pages`` with HVO off, then on, ``rounds`` times.
    Raises HostError where the kernel lacks the sysctl or the counter."""
    if read_int(host, HVO_PATH) is None:
        raise HostError("no vm.hugetlb_optimize_vmemmap (kernel without "
                        "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP)")
    if memmap_pages(host) is None:
        raise HostError("no nr_memmap_pages in /proc/vmstat (Linux 6.11+)")
    nr = global_file(PAGE_2M)
    orig_nr = read_int(host, nr) or 0
    orig_hvo = read_int(host, HVO_PATH) or 0
    out: list[Round] = []
    try:
        # a first grow touches memory the hypervisor has not handed over yet; not counted
        host.write_kernel(nr, str(orig_nr + pages))
        host.write_kernel(nr, str(orig_nr))
        for _ in range(rounds):
            for hvo in (False, True):
                host.write_kernel(HVO_PATH, "1" if hvo else "0")
                a = _settled(host)
                host.write_kernel(nr, str(orig_nr + pages))
                b = _settled(host)
                got = (read_int(host, nr) or 0) - orig_nr
                host.write_kernel(nr, str(orig_nr))
                c = _settled(host)
                out.append(Round(hvo, got, (a - b) * BASE_PAGE, (c - b) * BASE_PAGE))
    finally:
        host.write_kernel(HVO_PATH, str(orig_hvo))
        host.write_kernel(nr, str(orig_nr))
    return HvoMeasurement(pages, pages * vmemmap_saved_per_page(PAGE_2M), out)
