"""The one door to the machine: every path hosttune reads or writes goes through a ``Host``.

``Host(root="/")`` is the live system. ``Host(root=DIR)`` maps every absolute path under DIR
(an image, a chroot, a test fixture) and puts the command runner in offline mode: commands are
recorded as skipped, never run against the live system, and nothing outside DIR is touched.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hosttune.errors import HostError
from hosttune.host import fsops
from hosttune.host.runner import CommandResult, Runner

if TYPE_CHECKING:
    from hosttune.host.gpu.nvml import Nvml


@dataclass(frozen=True)
class FileState:
    """What a path holds: absent, a regular file (content + mode + owner), or a symlink."""

    exists: bool
    content: bytes | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    link_target: str | None = None


class Host:
    def __init__(self, root: str | Path = "/", *, state_dir: str | None = None,
                 nvml_backend: Any | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.offline = self.root != Path("/")
        self.runner = Runner(offline=self.offline)
        # Where the journal, lock and backups live (a path on the host, mapped under root).
        self.state_dir = state_dir or os.environ.get("HOSTTUNE_STATE_DIR") or "/var/lib/hosttune"
        self._nvml_backend = nvml_backend  # a pynvml-like object (tests inject a fake)
        self._nvml: Nvml | None = None

    def __repr__(self) -> str:
        return f"Host(root={str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------
    def path(self, p: str | Path) -> Path:
        """Map an absolute host path under the root prefix."""
        s = str(p)
        if not s.startswith("/"):
            raise HostError(f"host paths must be absolute: {s!r}")
        if self.root == Path("/"):
            return Path(s)
        return self.root / s.lstrip("/")

    def unmap(self, real: Path) -> str:
        """Inverse of :meth:`path`: the host path of a real path under the root."""
        if self.root == Path("/"):
            return str(real)
        return "/" + str(Path(real).relative_to(self.root))

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def can_write(self) -> bool:
        """Changes are allowed as root on the live system, or on a tree we may write."""
        if self.offline:
            return os.access(self.root, os.W_OK)
        return self.is_root

    # -- reading -----------------------------------------------------------------------------
    def exists(self, p: str) -> bool:
        return os.path.lexists(self.path(p))

    def is_dir(self, p: str) -> bool:
        return self.path(p).is_dir()

    def read_text(self, p: str) -> str | None:
        """Contents of a file, or None if it does not exist. PermissionError propagates so
        callers can mark a reading as 'needs root'."""
        try:
            with open(self.path(p), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            return None

    def read_value(self, p: str) -> str | None:
        """A one-line kernel value, stripped (sysfs/procfs)."""
        text = self.read_text(p)
        return None if text is None else text.strip()

    def listdir(self, p: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(p)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def glob(self, pattern: str) -> list[str]:
        """Glob a host path pattern; returns host paths (sorted)."""
        base = self.path("/")
        return sorted("/" + str(m.relative_to(base)) for m in base.glob(pattern.lstrip("/")))

    def file_state(self, p: str) -> FileState:
        real = self.path(p)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return FileState(exists=False)
        if stat.S_ISLNK(st.st_mode):
            return FileState(exists=True, link_target=os.readlink(real), mode=None)
        if not stat.S_ISREG(st.st_mode):
            raise HostError(f"{p} is not a regular file")
        with open(real, "rb") as fh:
            data = fh.read()
        return FileState(True, data, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    # -- writing -----------------------------------------------------------------------------
    def write_file(self, p: str, data: bytes, *, mode: int = 0o644,
                   uid: int | None = None, gid: int | None = None) -> None:
        real = self.path(p)
        fsops.atomic_write(real, data, mode=mode, root=self.root, uid=uid, gid=gid)

    def makedirs(self, p: str, mode: int = 0o755) -> list[str]:
        """Create missing directories; return the host paths created (outermost first)."""
        created: list[str] = []
        cur = p.rstrip("/") or "/"
        missing: list[str] = []
        while cur != "/" and not os.path.lexists(self.path(cur)):
            missing.append(cur)
            cur = os.path.dirname(cur)
        for d in reversed(missing):
            fsops._check_no_symlink(self.path(d), self.root)
            os.mkdir(self.path(d), mode)
            created.append(d)
        return created

    def remove(self, p: str) -> None:
        real = self.path(p)
        fsops._check_no_symlink(real.parent, self.root)
        try:
            os.unlink(real)
        except FileNotFoundError:
            return
        fsops.fsync_dir(real.parent)

    def rmdir_if_empty(self, p: str) -> bool:
        try:
            os.rmdir(self.path(p))
            return True
        except OSError:
            return False

    def symlink(self, target: str, p: str) -> None:
        real = self.path(p)
        fsops._check_no_symlink(real.parent, self.root)
        tmp = real.parent / f".{real.name}.hosttune-tmp-{os.getpid()}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, real)
        fsops.fsync_dir(real.parent)

    def write_kernel(self, p: str, value: str) -> None:
        """Write a runtime kernel value (/proc/sys, /sys) like ``echo value > file`` (newline
        included, which every kernel parser accepts). Under --root this writes the fixture."""
        if not value.endswith("\n"):
            value += "\n"
        fsops.write_kernel_file(self.path(p), value, root=self.root)

    # -- commands ----------------------------------------------------------------------------
    def run(self, argv: list[str], *, timeout_s: float = 60.0, input_text: str | None = None,
            check: bool = False, confined: bool = False) -> CommandResult:
        """``confined``: the command is pointed at the root by its own argument (``--root``,
        ``--prefix``), so it runs under --root too; every other command is only recorded."""
        return self.runner.run(argv, timeout_s=timeout_s, input_text=input_text, check=check,
                               confined=confined)

    def which(self, name: str) -> str | None:
        """Find a program in the standard locations of the (mapped) root."""
        for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            cand = f"{d}/{name}"
            real = self.path(cand)
            if real.is_file() and os.access(real, os.X_OK):
                return cand
        return None

    # -- NVIDIA ------------------------------------------------------------------------------
    def nvml(self, *, renew: bool = False) -> Nvml:
        """The NVML gateway (lazy; never the live driver under --root). ``renew`` replaces it
        with a fresh one: a gateway keeps a failed nvmlInit for its lifetime, so a long-running
        monitor renews it to retry once the driver may have appeared."""
        if self._nvml is None or renew:
            from hosttune.host.gpu.nvml import make_gateway

            self._nvml = make_gateway(self, self._nvml_backend)
        return self._nvml

    # -- facts -------------------------------------------------------------------------------
    @cached_property
    def facts(self) -> HostFacts:
        from hosttune.host.facts import read_facts

        return read_facts(self)


from hosttune.host.facts import HostFacts  # noqa: E402
