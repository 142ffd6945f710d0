#!/usr/bin/env python3
"""Whole-process wall time of `hosttune audit` (budget: <= 0.3 s on the 2-vCPU dev VM).

Interleaves three commands so machine noise hits all of them alike:
  python   - the bare interpreter (`python -c pass`): the floor nothing can beat
  audit    - `python -m hosttune audit --json` against the live host (built-in profile)
  audit-tree - the same against a fake 9950X tree (--root), for a host-independent figure
  audit-table - the live audit as the rich table (imports rich, which --json does not)
Reports median / min / max and the ratio audit / python. Usage: bench/audit_time.py [-n 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def interleaved(cmds: dict[str, list[str]], env: dict[str, str], n: int,
                cwd: str | None = None) -> dict[str, list[float]]:
    """Each command once per round, n rounds, after one warm-up run each (the page cache and
    the profile cache), so machine noise hits all of them alike."""
    for argv in cmds.values():
        timed(argv, env, cwd)
    res: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(n):
        for k, argv in cmds.items():
            res[k].append(timed(argv, env, cwd))
    return res


def print_table(res: dict[str, list[float]], width: int) -> None:
    n = len(next(iter(res.values())))
    print(f"{'command':<{width}} {'median':>8} {'min':>8} {'max':>8}   (seconds, n={n})")
    for k, v in res.items():
        print(f"{k:<{width}} {statistics.median(v):8.3f} {min(v):8.3f} {max(v):8.3f}")


def timed(argv: list[str], env: dict[str, str], cwd: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                   cwd=cwd, check=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from tests import fakehost

    tree = Path(tempfile.mkdtemp()) / "ryzen"
    fakehost.ryzen_9950x(tree)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    py = os.path.realpath(sys.executable)  # not a pyenv shim: that alone costs ~0.1 s
    cmds = {
        "python": [py, "-c", "pass"],
        "audit": [py, "-m", "hosttune", "audit", "--json"],
        "audit-tree": [py, "-m", "hosttune", "audit", "--json", "--root", str(tree)],
        "audit-table": [py, "-m", "hosttune", "audit"],
    }
    res = interleaved(cmds, env, args.n)
    print_table(res, 12)
    base = statistics.median(res["python"])
    for k in ("audit", "audit-tree", "audit-table"):
        print(f"{k} / python = {statistics.median(res[k]) / base:.2f}x")


if __name__ == "__main__":
    main()
