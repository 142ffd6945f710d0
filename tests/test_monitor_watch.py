"""`hosttune watch` driven in a real terminal (tmux): it starts, refreshes in place, quits on q
and leaves the terminal as it found it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.conftest import REPO, need
from tests.monitor_trees import full_ryzen


def _tmux(sock: str, *args: str) -> str:
    r = subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, timeout=20)
    return r.stdout


def _wait_for(sock: str, needle: str, timeout: float = 30.0) -> str:
    deadline = time.time() + timeout
    screen = ""
    while time.time() < deadline:
        screen = _tmux(sock, "capture-pane", "-p", "-t", "w")
        if needle in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not on screen:\n{screen}")


def test_watch_starts_refreshes_and_quits_on_q(tmp_path: Path) -> None:
    need(shutil.which("tmux") is not None, "tmux not installed")
    root = full_ryzen(tmp_path)
    free = root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
    free.write_text("40\n")
    sock = f"hosttune-test-{uuid.uuid4().hex[:8]}"
    cmd = (f"PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m hosttune watch "
           f"--interval 0.5 --root {shlex.quote(str(root))}; echo EXIT=$?; "
           "stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; sleep 60")
    env = dict(os.environ, TERM="xterm-256color")
    env.pop("TMUX", None)
    subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "w",
                    "-x", "80", "-y", "50", cmd], check=True, env=env, timeout=20)
    try:
        screen = _wait_for(sock, "hosttune watch")
        assert "32 CPUs" in screen and "/srv/hosttune/models" in screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        # refreshes in place: a value changed on the host appears without restarting
        free.write_text("17\n")
        screen = _wait_for(sock, "   17 ")
        assert screen.count("hosttune watch") == 1  # redrawn in place, not appended
        _tmux(sock, "send-keys", "-t", "w", "q")
        screen = _wait_for(sock, "EXIT=", timeout=15)
        assert "EXIT=0" in screen
        # the terminal is back in canonical mode (termios restored)
        screen = _wait_for(sock, "icanon", timeout=10)
        assert "-icanon" not in screen
    finally:
        _tmux(sock, "kill-server")
