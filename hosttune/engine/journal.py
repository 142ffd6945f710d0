"""The journal of originals: JSON under the state dir (/var/lib/hosttune), rewritten atomically
with fsync before every change, so a kill -9 at any point loses no original.

Layout::

    {"version": 1,
     "entries": [{"id", "change", "original", "txn", "at"}],   # first-ever originals, in order
     "transaction": null | {"id", "pid", "started", "profile",
                            "steps": [{"change", "before", "status": "pending"|"done"}]}}

``entries`` keeps the value each key had before hosttune first touched it (rollback target);
``transaction.steps[].before`` keeps the value before *this* run (undo target when a run fails
or was killed). A transaction left behind by a killed run is undone on the next start.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import stat
import time
from typing import Any

import msgspec
from msgspec import field

from hosttune.errors import HostError, LockedError
from hosttune.host import Host, fsops

VERSION = 1
MAX_BYTES = 64 << 20


class JournalWriteError(HostError):
    """The journal could not be written (ENOSPC, EROFS, EIO)."""


# --- validation: a journal is input too (a tampered or truncated file must not steer writes) ----
_KINDS = ("file", "symlink", "kernel", "choice", "command", "action")
_KERNEL_PREFIXES = ("/proc/", "/sys/")  # /proc/sys, /proc/irq/N/smp_affinity_list, /sys


def _path_problem(p: object) -> str | None:
    if not isinstance(p, str) or not p.startswith("/"):
        return f"{p!r} is not an absolute path"
    if "/".join(["", *fsops.normalize(p)]) != p or p == "/":
        return f"{p!r} is not a normalised path ('..', '.', '//' or a trailing '/')"
    if any(not c.isprintable() for c in p):
        return f"{p!r} has control characters"
    return None


def _change_problem(ch: object) -> str | None:
    if not isinstance(ch, dict):
        return "change is not a mapping"
    for k in ("id", "tunable", "kind", "summary"):
        if not isinstance(ch.get(k), str):
            return f"change.{k} is missing or not a string"
    if ch["kind"] not in _KINDS:
        return f"change.kind {ch['kind']!r} is not one of {', '.join(_KINDS)}"
    from hosttune.tunables import all_tunables

    families = {t.name: t for t in all_tunables()}
    if ch["tunable"] not in families:
        return f"change.tunable {ch['tunable']!r} is not a hosttune family"
    if ch["kind"] == "action":
        knobs = [k.name for k in families[ch["tunable"]].knobs]
        knob = ch.get("params", {}).get("knob") if isinstance(ch.get("params"), dict) else None
        if knob not in knobs:
            return (f"change.params.knob {knob!r} is not a knob of {ch['tunable']} (knobs: "
                    f"{', '.join(knobs) or 'none'})")
    if ch["kind"] in ("file", "symlink", "kernel", "choice") or ch.get("path") is not None:
        problem = _path_problem(ch.get("path"))
        if problem:
            return f"change.path: {problem}"
    if ch["kind"] in ("kernel", "choice") and not str(ch["path"]).startswith(_KERNEL_PREFIXES):
        return f"change.path {ch['path']!r}: a kernel value lives under /proc or /sys"
    if ch.get("value") is not None and not isinstance(ch["value"], str):
        return "change.value is not a string"
    mode = ch.get("mode", 0o644)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        return f"change.mode {mode!r} is not a file mode"
    if not isinstance(ch.get("params", {}), dict) or not isinstance(ch.get("needs", []), list):
        return "change.params / change.needs have the wrong type"
    if ch["kind"] == "command":
        for k in ("argv", "revert_argv"):
            argv = ch.get("params", {}).get(k)
            if argv is not None and (not isinstance(argv, list) or not all(
                    isinstance(a, str) for a in argv)):
                return f"change.params.{k} is not a list of strings"
    return None


def _original_problem(kind: str, path: str | None, orig: object) -> str | None:
    if not isinstance(orig, dict):
        return "is not a mapping"
    if kind in ("file", "symlink"):
        if not isinstance(orig.get("exists"), bool):
            return "exists is missing or not a boolean"
        for k in ("mode", "uid", "gid"):
            v = orig.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                return f"{k} {v!r} is not a number >= 0"
        if orig["exists"] and orig.get("link") is None:
            content = orig.get("content")
            if not isinstance(content, str) or not isinstance(orig.get("mode"), int):
                return "a file original needs content and mode"
            try:
                base64.b64decode(content.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError):
                return "content is not base64"
        link = orig.get("link")
        if link is not None and (not isinstance(link, str) or not link):
            return "link is not a string"
        dirs = orig.get("created_dirs", [])
        if not isinstance(dirs, list):
            return "created_dirs is not a list"
        for d in dirs:
            problem = _path_problem(d)
            if problem:
                return f"created_dirs: {problem}"
            if path is None or not path.startswith(d + "/"):
                return f"created_dirs: {d!r} is not a directory above {path!r}"
    elif kind in ("kernel", "choice"):
        v = orig.get("value")
        if v is not None and not isinstance(v, str):
            return "value is not a string"
    return None


def journal_problem(data: object) -> str | None:
    """What is wrong with a parsed journal (None when it is well formed): the shape, the
    change kinds and families, and every path (absolute, normalised: nothing above the root)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    if data.get("version") != VERSION:
        return f"unsupported journal version {data.get('version')!r}"
    entries = data.get("entries")
    if not isinstance(entries, list):
        return "'entries' is missing or not a list"
    for i, e in enumerate(entries):
        where = f"entries[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not e["id"]:
            return f"{where}: not an object with an id"
        where = f"entries[{i}] ({e['id']})"
        problem = _change_problem(e.get("change"))
        if problem is None and e["change"]["id"] != e["id"]:
            problem = f"change.id {e['change']['id']!r} differs from the entry id"
        if problem is None:
            p = _original_problem(e["change"]["kind"], e["change"].get("path"), e.get("original"))
            problem = p and f"original: {p}"
        if problem is None and not isinstance(e.get("txn"), str | None):
            problem = "txn is not a string"
        if problem:
            return f"{where}: {problem}"
    txn = data.get("transaction")
    if txn is None:
        return None
    if not isinstance(txn, dict) or not isinstance(txn.get("id"), str) \
            or not isinstance(txn.get("steps"), list):
        return "transaction: not an object with an id and steps"
    for i, step in enumerate(txn["steps"]):
        where = f"transaction.steps[{i}]"
        if not isinstance(step, dict) or step.get("status") not in ("pending", "done"):
            return f"{where}: not an object with status pending/done"
        problem = _change_problem(step.get("change"))
        if problem is None:
            p = _original_problem(step["change"]["kind"], step["change"].get("path"),
                                  step.get("before"))
            problem = p and f"before: {p}"
        if problem:
            ch = step.get("change")
            return f"{where} ({ch.get('id', '?') if isinstance(ch, dict) else '?'}): {problem}"
    return None


class Journal(msgspec.Struct):
    host: Host
    entries: list[dict[str, Any]] = field(default_factory=list)
    transaction: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return f"{self.host.state_dir}/journal.json"

    @classmethod
    def load(cls, host: Host) -> Journal:
        j = cls(host)
        shown = host.shown(j.path)
        st = host.lstat(j.path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise HostError(f"the journal {shown} is not a regular file (a directory or a "
                            "symlink): move it aside and look at what put it there")
        try:
            text = host.read_bytes(j.path, limit=MAX_BYTES)
        except PermissionError as err:
            raise HostError(f"cannot read the journal {shown}: permission denied") from err
        if text is None:
            return j
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            # Never silently drop originals: stop and let the operator look.
            raise HostError(f"the journal {shown} is corrupt ({err}); it holds the original "
                            "values - inspect it before removing it") from err
        problem = journal_problem(data)
        if problem:
            raise HostError(f"the journal {shown} is not valid: {problem}; it holds the "
                            "original values - inspect it before removing it")
        j.entries = list(data["entries"])
        j.transaction = data["transaction"]
        return j

    def ids(self) -> set[str]:
        return {e["id"] for e in self.entries}

    def save(self) -> None:
        """Write the journal atomically. A failure (disk full, read-only state dir) is a
        JournalWriteError: the caller undoes what the run did."""
        data = {"version": VERSION, "entries": self.entries, "transaction": self.transaction}
        try:
            self.host.makedirs(self.host.state_dir, 0o700)
            self.host.write_file(self.path, json.dumps(data, indent=1, sort_keys=True).encode(),
                                 mode=0o600)
        except OSError as err:
            raise JournalWriteError(f"cannot write the journal {self.host.shown(self.path)}: "
                                    f"{err.strerror or err}") from err

    def archive(self) -> None:
        """Move a finished journal aside (history/), so rollback leaves no active journal."""
        if not self.host.exists(self.path):
            return
        hist = f"{self.host.state_dir}/history"
        self.host.makedirs(hist, 0o700)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.host.rename(self.path, f"{hist}/journal-{stamp}-{os.getpid()}.json")

    @property
    def empty(self) -> bool:
        return not self.entries and self.transaction is None


class Lock:
    """Two runs on one tree cannot interleave: an exclusive flock on the root directory of the
    tree itself (so runs with different state dirs still exclude each other), plus the
    historical <state_dir>/lock, which holds the pid of the run for the message."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.fds: list[int] = []

    def _take(self, fd: int, what: str, *, pid_file: bool) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = "?"
            if pid_file:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            self._release()
            raise LockedError(f"another hosttune run (pid {holder}) holds {what}; "
                              "wait for it to finish") from err
        self.fds.append(fd)

    def __enter__(self) -> Lock:
        host = self.host
        root_fd = host.open_fd("/", os.O_RDONLY | os.O_DIRECTORY, regular=False)
        self._take(root_fd, f"the lock on {host.root}", pid_file=False)
        try:
            host.makedirs(host.state_dir, 0o700)
            fd = host.open_fd(f"{host.state_dir}/lock", os.O_RDWR | os.O_CREAT, 0o600,
                              regular=False)
        except OSError as err:
            self._release()
            raise HostError(f"cannot open the lock {host.shown(host.state_dir + '/lock')}: "
                            f"{err.strerror or err}") from err
        except BaseException:
            self._release()
            raise
        self._take(fd, host.shown(f"{host.state_dir}/lock"), pid_file=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def _release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # closing releases the flock
        self.fds = []

    def __exit__(self, *exc: object) -> None:
        self._release()
