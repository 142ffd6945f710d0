#!/usr/bin/env python3
"""Two checkouts of hosttune side by side: `audit --json` (live and on a fake 9950X tree) and
`models load` of a page-cached file, interleaved (the order flips every round, so drift on a
shared machine hits both alike), one warm-up each. Reports medians of wall and CPU time.

  PYTHONPATH=. flock /tmp/ht-heavy.lock python3 bench/ab_trees.py OLD_DIR NEW_DIR \\
      [-n 10] [--loads 4] [--load-mib 1024]

OLD_DIR/NEW_DIR hold a hosttune/ package (e.g. `git archive main hosttune | tar -x -C DIR`).
Root for the load part (grows the 2 MiB pool for the run and restores it; --loads 0 skips it).
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_models_load import hugetlbfs_scratch, run_arm  # noqa: E402
from tests import fakehost  # noqa: E402


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    c0, t0 = _child_cpu(), time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if r.returncode not in (0, 1):  # 1: findings
        raise SystemExit(f"{argv} failed ({r.returncode}): {r.stderr.strip()}")
    return wall, cpu


def audits(envs: dict[str, dict[str, str]], n: int) -> None:
    tree = Path(tempfile.mkdtemp()) / "ryzen"
    fakehost.ryzen_9950x(tree)
    py = os.path.realpath(sys.executable)
    cmds = {"audit": [py, "-m", "hosttune", "audit", "--json"],
            "audit-tree": [py, "-m", "hosttune", "audit", "--json", "--root", str(tree)]}
    for env in envs.values():
        for argv in cmds.values():
            timed(argv, env)
    res: dict[str, list[tuple[float, float]]] = {f"{k} {c}": [] for c in cmds for k in envs}
    for i in range(n):
        for k in list(envs)[:: 1 if i % 2 else -1]:
            for c, argv in cmds.items():
                res[f"{k} {c}"].append(timed(argv, envs[k]))
    for k, v in res.items():
        print(f"{k:<22} wall median {statistics.median(x[0] for x in v):.3f} s "
              f"(min {min(x[0] for x in v):.3f}), cpu median "
              f"{statistics.median(x[1] for x in v):.3f} s")


def loads(envs: dict[str, dict[str, str]], rounds: int, size: int) -> None:
    pages = size // (2 << 20) + 4
    with hugetlbfs_scratch(pages, "hosttune-ab-") as (tmp, mnt):
        src = os.path.join(tmp, "model.bin")
        block = os.urandom(64 << 20)
        with open(src, "wb") as fh:
            for _ in range(size // len(block)):
                fh.write(block)
        with open(src, "rb") as fh:  # into the page cache
            while fh.read(64 << 20):
                pass
        for env in envs.values():
            run_arm("load", src, mnt, env)
        res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in envs}
        for i in range(rounds):
            for k in list(envs)[:: 1 if i % 2 else -1]:
                res[k].append(run_arm("load", src, mnt, envs[k]))
        for k, v in res.items():
            whole, inner, cpu = (statistics.median(x[j] for x in v) for j in range(3))
            print(f"{k} models load {size >> 20} MiB: whole {whole:.3f} s, own seconds "
                  f"{inner:.3f} s, cpu {cpu:.3f} s (medians of {rounds})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--loads", type=int, default=4)
    ap.add_argument("--load-mib", type=int, default=1024)
    args = ap.parse_args()
    trees = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    for t in trees.values():  # an installed package has its .pyc files
        compileall.compile_dir(os.path.join(t, "hosttune"), quiet=1)
    envs = {k: {**os.environ, "PYTHONPATH": v} for k, v in trees.items()}
    audits(envs, args.n)
    if args.loads:
        loads(envs, args.loads, args.load_mib << 20)


if __name__ == "__main__":
    main()
