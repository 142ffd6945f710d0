"""Comparisons the real-boot scenarios share: audits, /etc snapshots, leftover files."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

# Shell snippets for stages (bash). `o` is the results directory read back after power-off.
PRELUDE = """set -u
o=/ht/out
run() { # run NAME CMD...: stdout to $o/NAME, stderr to $o/NAME.err, exit status to $o/NAME.rc
  local n=$1; shift
  "$@" > "$o/$n" 2> "$o/$n.err"; echo $? > "$o/$n.rc"
}
snap_etc() { tar --numeric-owner -cpf "$o/$1" -C / etc; }
"""


# the swap file the persistence and power-cut scenarios start with, active and in fstab
SWAP = "/swapfile"

# Files under /etc that may differ after apply + rollback, and why.
ETC_EXCEPTIONS = {
    # groupadd/groupdel (shadow) keep the previous /etc/group and /etc/gshadow as these
    # backups; rollback's groupdel leaves them holding the file with the group in it.
    "etc/group-": "shadow's backup of /etc/group, rewritten by groupadd/groupdel",
    "etc/gshadow-": "shadow's backup of /etc/gshadow, rewritten by groupadd/groupdel",
}


def audit_rows(text: str) -> list[dict[str, Any]]:
    return json.loads(text)["rows"]


_PID = re.compile(r"\(pid \d+\)|pid \d+")


def comparable(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """An audit's rows without what legitimately differs between two boots of the same state:
    daemon PIDs ("(pid 812)") in the current/note text."""
    out = []
    for r in rows:
        out.append(tuple(_PID.sub("pid N", str(r.get(k, ""))) for k in
                         ("tunable", "key", "current", "desired", "status", "note")))
    return out


def not_ok(rows: list[dict[str, Any]], allowed: tuple[str, ...] = ("ok", "unsupported")
           ) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] not in allowed]


def tar_entries(path: Path) -> dict[str, tuple[Any, ...]]:
    """name -> (type, mode, uid, gid, link target, content) of every member."""
    out: dict[str, tuple[Any, ...]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            data = b""
            if m.isfile():
                f = tf.extractfile(m)
                data = f.read() if f else b""
            out[m.name] = (m.type, m.mode, m.uid, m.gid, m.linkname, data)
    return out


def etc_differences(before: Path, after: Path, exceptions: dict[str, str]) -> list[str]:
    """Paths under /etc that differ (added, removed, other bytes or metadata), minus the named
    exceptions (path -> why it may differ)."""
    a, b = tar_entries(before), tar_entries(after)
    diffs = []
    for name in sorted(set(a) | set(b)):
        if name in exceptions:
            continue
        if name not in a:
            diffs.append(f"added {name}")
        elif name not in b:
            diffs.append(f"removed {name}")
        elif a[name] != b[name]:
            what = [f for f, x, y in zip(("type", "mode", "uid", "gid", "link", "content"),
                                         a[name], b[name], strict=True) if x != y]
            diffs.append(f"changed {name} ({', '.join(what)})")
    return diffs
