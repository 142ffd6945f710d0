"""Scrape time of `hosttune exporter` on this host: start it on an ephemeral loopback port,
warm up, time N GET /metrics and print median / p95 / max (ms).

    PYTHONPATH=. python3 bench/bench_scrape.py [N]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "hosttune", "exporter", "--listen",
                             "127.0.0.1:0"], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    m = re.search(r":(\d+)/metrics", proc.stderr.readline())
    assert m, "exporter did not start"
    url = f"http://127.0.0.1:{m.group(1)}/metrics"
    try:
        for _ in range(5):
            urllib.request.urlopen(url, timeout=10).read()
        times, size = [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=10).read()
            times.append((time.perf_counter() - t0) * 1000)
            size = len(body)
            time.sleep(0.01)
        times.sort()
        print(f"scrapes={n} bytes={size} median_ms={times[n // 2]:.2f} "
              f"p95_ms={times[int(n * 0.95)]:.2f} max_ms={times[-1]:.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
