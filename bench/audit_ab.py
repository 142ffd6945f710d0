#!/usr/bin/env python3
"""`hosttune audit --json` of two installs side by side, interleaved (this machine is noisy).

Each install is a virtualenv made the way the README does it (`python3 -m venv V && V/bin/pip
install SRC`), so neither pays for an editable-install finder or other .pth files of the
developer's interpreter. One round runs `python -c pass` (the floor), then each install once.
Usage: bench/audit_ab.py [-n 30] VENV_A VENV_B
"""

from __future__ import annotations

import argparse
import os
import statistics

from audit_time import interleaved, print_table  # bench/ is sys.path[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("venvs", nargs=2)
    args = ap.parse_args()
    # PYTHONPATH would make both runs import the same checkout; PYTHONDONTWRITEBYTECODE would
    # recompile every module on every run
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    cmds = {"python -c pass": [f"{args.venvs[0]}/bin/python", "-c", "pass"]}
    cmds.update({v: [f"{v}/bin/hosttune", "audit", "--json"] for v in args.venvs})
    times = interleaved(cmds, env, args.n, cwd="/")
    print_table(times, 40)
    a, b = (statistics.median(times[v]) for v in args.venvs)
    print(f"B / A = {b / a:.3f}")


if __name__ == "__main__":
    main()
