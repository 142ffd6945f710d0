"""How to fuse the store checksum with the copy: alternatives measured side by side.

Each mode copies the same page-cache file into a fresh MAP_SHARED mapping of a new hugetlbfs
file with T threads (each thread one contiguous 32 MiB leaf at a time, as models load does),
reading PIECE bytes per preadv and, depending on the mode, hashing each piece right after it
was written (still in cache):

  ceiling     no hash, the whole 32 MiB leaf in one preadv
  pieces      no hash, PIECE-sized preadv (what the piece size alone costs)
  stream      xxh3_64 streaming state per leaf, update(piece)  (same digest as one-shot)
  oneshot     xxh3_64_intdigest(piece) per piece (a tree with PIECE-sized leaves)
  twopass     the old way: preadv the leaf, then xxh3_64_intdigest over the 32 MiB

Wall time and this process's CPU time (user + system) are both reported: on a shared machine
the CPU time is the steadier measure of what a mode costs. Also prints the in-cache hash rate
of one core. Rounds are interleaved (every mode once per round, order rotated) and the medians
reported. Root; grows the 2 MiB pool for the run and
restores it:  PYTHONPATH=. flock /tmp/ht-heavy.lock python3 bench/bench_checksum_pieces.py
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_models_load import hugetlbfs_scratch

LEAF = 32 << 20


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def copy(src: str, mnt: str, threads: int, mode: str, piece: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one copy."""
    size = os.path.getsize(src)
    total = -(-(size + 64) // (2 << 20)) * (2 << 20)
    sfd = os.open(src, os.O_RDONLY)
    path = os.path.join(mnt, f"f-{mode}")
    dfd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(dfd, total)
    m = mmap.mmap(dfd, total, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    view = memoryview(m)
    nxt = [0]
    lock = threading.Lock()
    digests: dict[int, int] = {}

    def work() -> None:
        while True:
            with lock:
                off = nxt[0]
                nxt[0] += LEAF
            if off >= size:
                return
            n = min(LEAF, size - off)
            step = n if mode in ("ceiling", "twopass") else piece
            h = xxhash.xxh3_64() if mode == "stream" else None
            ds = []
            p = 0
            while p < n:
                k = min(step, n - p)
                part = view[off + p:off + p + k]
                got = 0
                while got < k:
                    got += os.preadv(sfd, [part[got:]], off + p + got)
                if h is not None:
                    h.update(part)
                elif mode == "oneshot":
                    ds.append(xxhash.xxh3_64_intdigest(part))
                part.release()
                p += k
            if mode == "twopass":
                part = view[off:off + n]
                ds.append(xxhash.xxh3_64_intdigest(part))
                part.release()
            with lock:
                digests[off] = h.intdigest() if h is not None else (ds[0] if ds else 0)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    c0 = _cpu()
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    cpu = _cpu() - c0
    view.release()
    m.close()
    os.close(dfd)
    os.unlink(path)
    os.close(sfd)
    return dt, cpu


def cache_rate(piece: int) -> dict[str, float]:
    buf = memoryview(bytearray(os.urandom(piece)))
    out = {}
    for name, fn in (("oneshot", lambda: xxhash.xxh3_64_intdigest(buf)),
                     ("stream", lambda: xxhash.xxh3_64().update(buf))):
        n = max(1, (4 << 30) // piece)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = n * piece / (time.perf_counter() - t0) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pieces-kib", default="256,512,1024")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    size = args.size_mib << 20
    pieces = [int(x) << 10 for x in args.pieces_kib.split(",")]
    with hugetlbfs_scratch(size // (2 << 20) + 4, "hosttune-ckbench-") as (tmp, mnt):
        src = os.path.join(tmp, "src.bin")
        block = os.urandom(64 << 20)
        with open(src, "wb") as fh:
            for _ in range(size // len(block)):
                fh.write(block)
        modes = [("ceiling", LEAF), ("twopass", LEAF)]
        for p in pieces:
            modes += [("pieces", p), ("stream", p), ("oneshot", p)]
        copy(src, mnt, args.threads, "ceiling", LEAF)  # warm
        times: dict[str, list[tuple[float, float]]] = {f"{m}/{p >> 10}K": [] for m, p in modes}
        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for m, p in order:
                times[f"{m}/{p >> 10}K"].append(copy(src, mnt, args.threads, m, p))
        def med(k: str, i: int) -> float:
            return statistics.median(x[i] for x in times[k])

        c = f"ceiling/{LEAF >> 10}K"
        res: dict[str, object] = {
            k: {"median_s": round(med(k, 0), 4), "gbps": round(size / med(k, 0) / 1e9, 2),
                "vs_ceiling": round(med(c, 0) / med(k, 0), 3),
                "cpu_s": round(med(k, 1), 4), "cpu_vs_ceiling": round(med(c, 1) / med(k, 1), 3)}
            for k in times}
        res["cache_rate_gbps"] = {f"{p >> 10}K": cache_rate(p) for p in pieces}
        res["xxhash"] = xxhash.VERSION
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
