"""HugeTLB Vmemmap Optimization: the struct-page memory the kernel frees, measured against what
hosttune computes (hosttune.bench.hvo: /proc/vmstat nr_memmap_pages around a 2 MiB pool grown
and shrunk with vm.hugetlb_optimize_vmemmap off and on, alternately, in one run).

Root; restores the pool and the sysctl, under the kernel-test lock. On a shared machine:
  PYTHONPATH=. flock /tmp/ht-heavy.lock python3 bench/bench_hvo.py [--pages 256 --rounds 5]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform

from hosttune.bench.hvo import measure
from hosttune.host import Host


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    fd = os.open("/tmp/hosttune-kernel-tests.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        m = measure(Host("/"), args.pages, args.rounds)
    finally:
        os.close(fd)
    if args.json:
        print(json.dumps({"kernel": platform.release(), "pages": m.pages,
                          "computed_bytes": m.computed_bytes,
                          "measured_bytes": m.measured_bytes,
                          "grow_measured_bytes": m.grow_measured_bytes,
                          "rounds": [r.__dict__ for r in m.rounds]}, indent=1))
        return
    print(f"kernel {platform.release()}, {m.pages} x 2 MiB pages "
          f"({m.pages * 2} MiB), {args.rounds} rounds per arm, alternating")
    print(f"{'round':>5} {'hvo':>4} {'got':>5} {'grow: freed KiB':>16} "
          f"{'shrink: restored KiB':>21}")
    for i, r in enumerate(m.rounds):
        print(f"{i // 2:>5} {'on' if r.hvo else 'off':>4} {r.allocated:>5} "
              f"{r.grow_freed_bytes // 1024:>16} {r.shrink_restored_bytes // 1024:>21}")
    print(f"computed saving {m.computed_bytes / 1024:.0f} KiB; measured (shrink, median on - "
          f"off) {m.measured_bytes / 1024:.0f} KiB = {m.measured_bytes / m.computed_bytes:.3f}x;"
          f" grow side {m.grow_measured_bytes / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
