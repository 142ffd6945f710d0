"""Load rate of `hosttune models load` from the page cache vs the ceiling measured in the same
run: parallel preadv of the same file into reused buffers (same thread count, same chunks).

Run as root (it grows the 2 MiB pool for the run and restores it, under the same lock the
kernel tests take):  PYTHONPATH=. python3 bench/bench_models_load.py [--size-mib 512]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import subprocess
import tempfile
import threading
import time

from hosttune.host import Host
from hosttune.models import store
from hosttune.models.checksum import LEAF_LOG2

HP = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


_BUFS: dict[bool, list[memoryview]] = {False: [], True: []}
MAP_HUGETLB = 0x40000  # not in Python 3.11's mmap module


def ceiling(path: str, threads: int, huge: bool = False) -> float:
    """huge=False: reused anonymous 4 KiB-page buffers (the issue's ceiling); huge=True: the
    same into reused huge-page buffers, i.e. the same destination page size as the store."""
    size = os.path.getsize(path)
    chunk = 1 << LEAF_LOG2
    bufs = _BUFS[huge]
    while len(bufs) < threads:  # reused across runs, faulted in before any timing
        if huge:
            b = mmap.mmap(-1, chunk, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
        else:
            b = bytearray(chunk)  # type: ignore[assignment]
        mv = memoryview(b)
        mv[::4096] = b"\1" * len(mv[::4096])
        bufs.append(mv)
    fd = os.open(path, os.O_RDONLY)
    nxt = [0]
    lock = threading.Lock()

    def work(buf: memoryview) -> None:
        while True:
            with lock:
                off = nxt[0]
                nxt[0] += chunk
            if off >= size:
                return
            n = min(chunk, size - off)
            got = 0
            while got < n:
                got += os.preadv(fd, [buf[got:n]], off + got)

    ts = [threading.Thread(target=work, args=(bufs[i],)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    os.close(fd)
    return size / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    size = args.size_mib << 20
    pages = size // (2 << 20) + 2 + args.threads * 16  # + the huge-page ceiling buffers
    lockfd = os.open("/tmp/hosttune-kernel-tests.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lockfd, fcntl.LOCK_EX)
    with open(HP) as fh:
        orig = int(fh.read())
    tmp = tempfile.mkdtemp(prefix="hosttune-bench-")
    mnt = os.path.join(tmp, "store")
    os.mkdir(mnt)
    src = os.path.join(tmp, "model.bin")
    mounted = False
    results: dict[str, object] = {"size_bytes": size, "threads": args.threads}
    try:
        block = os.urandom(64 << 20)
        with open(src, "wb") as fh:
            for _ in range(size // len(block)):
                fh.write(block)
        with open(HP, "w") as fh:
            fh.write(str(orig + pages))
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", mnt],
                       check=True)
        mounted = True
        ceiling(src, args.threads)  # warm the page cache
        host = Host("/")
        m = store.resolve_mount(host, None, mnt)
        for label, kw in (("load", {"checksum": False}), ("load+checksum", {"checksum": True}),
                          ("load --node 0", {"checksum": False, "node": 0})):
            rates, ceil, ceil_huge = [], [], []
            for _ in range(args.runs):
                ceil.append(ceiling(src, args.threads))
                ceil_huge.append(ceiling(src, args.threads, huge=True))
                t0 = time.perf_counter()
                res = store.load_model(host, src, m, name="bench.bin", threads=args.threads,
                                       **kw)  # type: ignore[arg-type]
                rates.append(size / (time.perf_counter() - t0))
                store.unload_model(host, res.model)
            results[label] = {
                "first_rate_gbps": rates[0] / 1e9,
                "best_rate_gbps": max(rates) / 1e9,
                "median_rate_gbps": sorted(rates)[len(rates) // 2] / 1e9,
                "ceiling_best_gbps": max(ceil) / 1e9,
                "ceiling_hugepage_buffer_best_gbps": max(ceil_huge) / 1e9,
                "ratio_best_vs_hugepage_ceiling": max(rates) / max(ceil_huge),
                "ratio_best": max(rates) / max(ceil),
                "ratio_median": sorted(rates)[len(rates) // 2] / sorted(ceil)[len(ceil) // 2],
            }
    finally:
        for lst in _BUFS.values():
            for mv in lst:
                obj = mv.obj
                mv.release()
                if isinstance(obj, mmap.mmap):
                    obj.close()
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        with open(HP, "w") as fh:
            fh.write(str(orig))
        for p in (src,):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(mnt)
        os.rmdir(tmp)
        fcntl.flock(lockfd, fcntl.LOCK_UN)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
