"""CPU use of `hosttune watch --interval 1` left running in a real terminal (tmux, 80x40):
CPU time (utime+stime of the whole process, all threads) over a window, as % of one core.

    PYTHONPATH=. python3 bench/bench_watch.py [WINDOW_S] [AUDIT_INTERVAL_S]
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOCK = f"hosttune-bench-{os.getpid()}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    window = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    audit = sys.argv[2] if len(sys.argv) > 2 else "60"
    cmd = (f"PYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} -m hosttune "
           f"watch --interval 1 --audit-interval {audit}")
    subprocess.run(["tmux", "-L", SOCK, "-f", "/dev/null", "new-session", "-d", "-s", "b",
                    "-x", "80", "-y", "40", cmd], check=True)
    try:
        pid = int(subprocess.run(["tmux", "-L", SOCK, "display", "-p", "-t", "b",
                                  "#{pane_pid}"], capture_output=True, text=True,
                                 check=True).stdout)
        time.sleep(5)  # imports and first frame are start-up, not steady state
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        pct = 100 * (c1 - c0) / (t1 - t0)
        print(f"window_s={t1 - t0:.1f} cpu_s={c1 - c0:.2f} cpu_pct_of_one_core={pct:.2f} "
              f"audit_interval_s={audit}")
        subprocess.run(["tmux", "-L", SOCK, "send-keys", "-t", "b", "q"], check=True)
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "-L", SOCK, "kill-server"], capture_output=True)


if __name__ == "__main__":
    main()
