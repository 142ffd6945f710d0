"""`hosttune models load` as a user runs it, against the ceiling for the same job, side by side.

The ceiling: a minimal Python process that creates a new file on the same hugetlbfs mount,
maps it MAP_SHARED and has one thread per CPU `preadv` the page-cached source straight into
the mapping, 32 MiB at a time (it pays the kernel's zeroing of every fresh huge page; a load
that fills its pages with UFFDIO_COPY does not - each arm's "fill" says how it copied). The
load: `python3 -m hosttune models load SRC --mount M --json`, checksum on and off.
Both are separate processes started the same way (same interpreter, site and PYTHONPATH).

Per size, every round runs each arm once, in an order rotated each round (drift on this shared
machine hits every arm alike); one warm-up round first (the first touch of a freshly grown pool
is slow in this VM). Reported per arm: median whole-process wall time, median in-process time
(the ceiling's own copy time; load's own ``seconds`` from --json, the whole load_model call),
and the ratios ceiling/load of both (1.0 = as fast as the ceiling); also each process's CPU
time (user + system, from wait4), the steadier measure when other jobs share the CPUs.

hosttune is byte-compiled first (compileall, into the gitignored __pycache__): an installed
package has its .pyc files, and this environment sets PYTHONDONTWRITEBYTECODE, which would
otherwise make every load compile hosttune's sources (~0.1 s) - a cost no user pays.

Root; grows the 2 MiB pool for the run and restores it, under the kernel-test lock. Run it
under the heavy lock on a shared machine:
  PYTHONPATH=. flock /tmp/ht-heavy.lock python3 bench/bench_models_load.py [--sizes-mib 2048,4096]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

HP = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
KERNEL_LOCK = "/tmp/hosttune-kernel-tests.lock"  # the tests' lock on global kernel state
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The ceiling, as a process of its own: prints its copy time (threads started -> joined).
CEILING = r"""
import mmap, os, sys, threading, time
src, dst = sys.argv[1], sys.argv[2]
size = os.path.getsize(src)
page = os.statvfs(os.path.dirname(dst)).f_bsize
total = -(-(size + 64) // page) * page
sfd = os.open(src, os.O_RDONLY)
dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.ftruncate(dfd, total)
m = mmap.mmap(dfd, total, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
view = memoryview(m)
chunk = 32 << 20
nxt = [0]
lock = threading.Lock()
def work():
    while True:
        with lock:
            off = nxt[0]
            nxt[0] += chunk
        if off >= size:
            return
        n = min(chunk, size - off)
        part = view[off:off + n]
        got = 0
        while got < n:
            got += os.preadv(sfd, [part[got:]], off + got)
        part.release()
ts = [threading.Thread(target=work) for _ in range(os.cpu_count() or 1)]
t0 = time.perf_counter()
for t in ts:
    t.start()
for t in ts:
    t.join()
print(time.perf_counter() - t0)
"""


# `hosttune models load` with userfaultfd unavailable (as on an architecture without it, or
# under a seccomp filter): the store's pages are faulted (zeroed) and filled by preadv.
PREADV_LOAD = ("import sys; from hosttune.models import kernel; kernel._SYS_USERFAULTFD.clear(); "
               "sys.argv[0] = 'hosttune'; from hosttune.cli import main; main()")


@contextlib.contextmanager
def hugetlbfs_scratch(pages: int, prefix: str) -> Iterator[tuple[str, str]]:
    """(scratch dir under /var/tmp, a 2 MiB hugetlbfs mounted at <dir>/store) with the pool
    grown by ``pages``, under the kernel-tests lock; the pool, the mount and the dir's plain
    files are undone on exit, also on failure."""
    lockfd = os.open(KERNEL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lockfd, fcntl.LOCK_EX)
    with open(HP) as fh:
        orig = int(fh.read())
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    mnt = os.path.join(tmp, "store")
    os.mkdir(mnt)
    mounted = False
    try:
        with open(HP, "w") as fh:
            fh.write(str(orig + pages))
        with open(HP) as fh:
            if int(fh.read()) < orig + pages:
                raise SystemExit("could not grow the 2 MiB pool")
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", mnt],
                       check=True)
        mounted = True
        yield tmp, mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        with open(HP, "w") as fh:
            fh.write(str(orig))
        for f in os.listdir(tmp):
            p = os.path.join(tmp, f)
            if os.path.isfile(p):
                os.unlink(p)
        os.rmdir(mnt)
        os.rmdir(tmp)
        fcntl.flock(lockfd, fcntl.LOCK_UN)
        os.close(lockfd)


def machine() -> str:
    mem = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"kernel {platform.release()}, {os.cpu_count()} CPUs ({model}), "
            f"{mem / 2**30:.1f} GiB RAM, Python {platform.python_version()}")


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_arm(arm: str, src: str, mnt: str,
            env: dict[str, str]) -> tuple[float, float, float, str]:
    """(whole-process seconds, in-process seconds, CPU seconds of the process, how the load
    filled the pages) of one run; the stored file is removed afterwards (outside the timing)."""
    dst = os.path.join(mnt, "bench-" + "".join(c for c in arm if c.isalnum()))
    if arm == "ceiling":
        argv = [sys.executable, "-c", CEILING, src, dst]
    else:
        load = ["models", "load", src, "--mount", mnt, "--name", os.path.basename(dst), "--json"]
        argv = [sys.executable, "-m", "hosttune", *load]
        if arm == "load --no-checksum":
            argv.append("--no-checksum")
        elif arm == "load (preadv)":  # as where userfaultfd is unavailable
            argv = [sys.executable, "-c", PREADV_LOAD, *load]
    c0 = _child_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    whole = time.perf_counter() - t0
    cpu = _child_cpu() - c0
    try:
        if r.returncode != 0:
            raise RuntimeError(f"{arm} failed ({r.returncode}): {r.stderr.strip()}")
        out = {"seconds": r.stdout, "fill": "preadv"} if arm == "ceiling" else json.loads(r.stdout)
        inner, fill = float(out["seconds"]), str(out["fill"])
    finally:
        if os.path.exists(dst):
            os.unlink(dst)
    return whole, inner, cpu, fill


def bench_size(size: int, mnt: str, tmp: str, rounds: int, env: dict[str, str]) -> dict:
    src = os.path.join(tmp, f"model-{size >> 20}M.bin")
    block = os.urandom(64 << 20)
    with open(src, "wb") as fh:
        for _ in range(size // len(block)):
            fh.write(block)
    arms = ["ceiling", "load", "load --no-checksum", "load (preadv)"]
    try:
        with open(src, "rb") as fh:  # into the page cache
            while fh.read(64 << 20):
                pass
        for arm in arms:  # warm-up: fresh pool pages, interpreter caches
            run_arm(arm, src, mnt, env)
        t: dict[str, list[tuple[float, float, float, str]]] = {a: [] for a in arms}
        for r in range(rounds):
            for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
                t[arm].append(run_arm(arm, src, mnt, env))
    finally:
        os.unlink(src)
    med = {a: tuple(statistics.median(x[k] for x in v) for k in range(3)) for a, v in t.items()}
    cw, ci, cc = med["ceiling"]
    out: dict[str, object] = {"size_bytes": size, "rounds": rounds}
    for a, (w, i, c) in med.items():
        out[a] = {"whole_s": round(w, 4), "inner_s": round(i, 4),
                  "inner_gbps": round(size / i / 1e9, 2), "cpu_s": round(c, 4),
                  "whole_ratio": round(cw / w, 3), "inner_ratio": round(ci / i, 3),
                  "cpu_ratio": round(cc / c, 3),
                  "fill": "/".join(sorted({x[3] for x in t[a]}))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mib", default="2048,4096")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(x) << 20 for x in args.sizes_mib.split(",")]
    pages = max(sizes) // (2 << 20) + 4
    import compileall

    compileall.compile_dir(os.path.join(HERE, "hosttune"), quiet=1)
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    results: dict[str, object] = {"machine": machine(),
                                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with hugetlbfs_scratch(pages, "hosttune-bench-") as (tmp, mnt):
        for size in sizes:
            results[f"{size >> 20} MiB"] = bench_size(size, mnt, tmp, args.rounds, env)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
