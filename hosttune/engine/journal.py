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

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from hosttune.errors import HostError, LockedError
from hosttune.host import Host, fsops

VERSION = 1


@dataclass
class Journal:
    host: Host
    entries: list[dict[str, Any]] = field(default_factory=list)
    transaction: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return f"{self.host.state_dir}/journal.json"

    @classmethod
    def load(cls, host: Host) -> Journal:
        j = cls(host)
        try:
            text = host.read_text(j.path)
        except PermissionError as err:
            raise HostError(f"cannot read the journal {j.path}: permission denied") from err
        if text is None:
            return j
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            # Never silently drop originals: stop and let the operator look.
            raise HostError(f"the journal {j.path} is corrupt ({err}); it holds the original "
                            "values - inspect it before removing it") from err
        if data.get("version") != VERSION:
            raise HostError(f"{j.path}: unsupported journal version {data.get('version')!r}")
        j.entries = list(data.get("entries", []))
        j.transaction = data.get("transaction")
        return j

    def ids(self) -> set[str]:
        return {e["id"] for e in self.entries}

    def save(self) -> None:
        self.host.makedirs(self.host.state_dir, 0o700)
        data = {"version": VERSION, "entries": self.entries, "transaction": self.transaction}
        self.host.write_file(self.path, json.dumps(data, indent=1, sort_keys=True).encode(),
                             mode=0o600)

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
        root_fd = os.open(host.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._take(root_fd, f"the lock on {host.root}", pid_file=False)
        try:
            host.makedirs(host.state_dir, 0o700)
            dfd, name, _ = fsops.parent_fd(host.root, f"{host.state_dir}/lock")
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dfd)
            finally:
                os.close(dfd)
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
