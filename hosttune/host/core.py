"""The one door to the machine: every path hosttune reads or writes goes through a ``Host``.

``Host(root="/")`` is the live system. ``Host(root=DIR)`` maps every absolute path under DIR
(an image, a chroot, a test fixture) and puts the command runner in offline mode: commands are
recorded as skipped, never run against the live system, and nothing outside DIR is touched.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, overload

import msgspec

from hosttune.errors import HostError
from hosttune.host import fsops
from hosttune.host.runner import CommandResult, Runner

if TYPE_CHECKING:
    from hosttune.host.gpu.nvml import Nvml

MAX_READ = 64 << 20  # no file hosttune reads is near this; /dev/zero-sized inputs stop here


class FileState(msgspec.Struct, frozen=True):
    """What a path holds: absent, a regular file (content + mode + owner), or a symlink."""

    exists: bool
    content: bytes | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    link_target: str | None = None


class WalkedFile(msgspec.Struct, frozen=True):
    """A regular file found by :meth:`Host.walk_files`: its host path, its path relative to the
    walked directory, and its lstat."""

    path: str
    rel: str
    st: os.stat_result


class Host:
    def __init__(self, root: str | Path = "/", *, state_dir: str | None = None,
                 nvml_backend: Any | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self._root_s = str(self.root)
        self.offline = self.root != Path("/")
        self.runner = Runner(offline=self.offline)
        # Where the journal, lock and backups live (a path on the host, mapped under root).
        sd = state_dir or os.environ.get("HOSTTUNE_STATE_DIR") or "/var/lib/hosttune"
        if not sd.startswith("/"):
            raise HostError(f"HOSTTUNE_STATE_DIR={sd}: not an absolute path")
        # normalised: the state dir is always a directory of this tree, never above it
        self.state_dir = "/" + "/".join(fsops.normalize(sd))
        self._nvml_backend = nvml_backend  # a pynvml-like object (tests inject a fake)
        self._nvml: Nvml | None = None

    def __repr__(self) -> str:
        return f"Host(root={str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------
    def _check(self, p: str | Path) -> str:
        s = str(p)
        if not s.startswith("/"):
            raise HostError(f"host paths must be absolute: {s!r}")
        return s

    def path(self, p: str | Path) -> Path:
        """The real path of an absolute host path: under --root every component, the last one
        included, is resolved inside the root (``..`` stops at it, an absolute symlink starts
        again at it), so whatever the caller opens is inside the tree."""
        s = self._check(p)
        if self._root_s == "/":
            return Path(s)
        return Path(fsops.resolve_in_root(self._root_s, s))

    def lpath(self, p: str | Path) -> Path:
        """Like :meth:`path`, but the last component is not followed (lstat, readlink)."""
        s = self._check(p)
        if self._root_s == "/":
            return Path(s)
        return Path(fsops.resolve_in_root(self._root_s, s, follow_last=False))

    def unmap(self, real: Path) -> str:
        """Inverse of :meth:`path`: the host path of a real path under the root."""
        if self.root == Path("/"):
            return str(real)
        return "/" + str(Path(real).relative_to(self.root))

    def shown(self, p: str) -> str:
        """A host path for messages (with the tree it lives in, under --root)."""
        return fsops.shown(self.root, fsops.normalize(p))

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
        return os.path.lexists(self.lpath(p))

    def is_dir(self, p: str) -> bool:
        return self.path(p).is_dir()

    def lstat(self, p: str) -> os.stat_result | None:
        """lstat of a host path (the last component not followed), None when absent."""
        try:
            return os.lstat(self.lpath(p))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def stat(self, p: str) -> os.stat_result | None:
        """stat of a host path (symlinks followed inside the root), None when absent."""
        try:
            return os.stat(self.path(p))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def is_file(self, p: str) -> bool:
        """A regular file (after symlinks, resolved inside the root)."""
        st = self.stat(p)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_symlink(self, p: str) -> bool:
        st = self.lstat(p)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def realpath(self, p: str) -> str:
        """The host path ``p`` names once every symlink is resolved (inside the root)."""
        if self._root_s == "/":
            return os.path.realpath(self._check(p))
        return self.unmap(self.path(p))

    def readlink(self, p: str) -> str | None:
        """The target of a symlink, as stored (never resolved); None when ``p`` is absent or
        not a symlink."""
        try:
            return os.readlink(self.lpath(p))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            if err.errno == errno.EINVAL:  # not a symlink
                return None
            raise

    def access(self, p: str, mode: int) -> bool:
        """os.access of a host path (resolved inside the root)."""
        return os.access(self.path(p), mode)

    def statvfs(self, p: str) -> os.statvfs_result:
        return os.statvfs(self.path(p))

    def fs_type(self, p: str) -> int:
        """statfs(2) f_type of the filesystem holding ``p`` (OSError when it cannot be read)."""
        from hosttune.host.statfs import fs_type

        return fs_type(str(self.path(p)))

    def is_hugetlbfs(self, p: str) -> bool:
        """Whether directory ``p`` is on a hugetlbfs mount (False when it cannot be told)."""
        from hosttune.host.statfs import HUGETLBFS_MAGIC

        try:
            return self.fs_type(p) == HUGETLBFS_MAGIC
        except OSError:
            return False

    def open_fd(self, p: str, flags: int = os.O_RDONLY, mode: int = 0o644, *,
                regular: bool = True) -> int:
        """A descriptor of host path ``p`` for callers that stream (pread, mmap, preadv).

        Without O_CREAT the path is resolved inside the root (no component may leave it, a
        link swapped in since is refused by O_NOFOLLOW) and opened with O_NONBLOCK for reads,
        so a FIFO cannot block the open. With O_CREAT the file is created from a descriptor
        of its directory reached without following any symlink (the write rule of fsops).
        ``regular``: anything but a regular file (a FIFO, a device, a directory) is a
        HostError before the descriptor is returned. OSError (absent, permission) propagates."""
        s = self._check(p)
        flags |= os.O_CLOEXEC
        if flags & os.O_CREAT:
            fd = fsops.open_at(self.root, s, flags | os.O_NOFOLLOW, mode)
        else:
            if flags & os.O_ACCMODE == os.O_RDONLY:
                flags |= os.O_NONBLOCK
            if self._root_s != "/" and fsops.normalize(s):
                flags |= os.O_NOFOLLOW  # (the root itself is the caller's, a link or not)
            try:
                fd = os.open(self.path(s), flags)
            except OSError as err:
                if err.errno == errno.ELOOP and self._root_s != "/":
                    raise HostError(f"{self.shown(s)} is a symlink (it changed while being "
                                    "opened)") from err
                raise
        if regular:
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise HostError(f"{self.shown(s)} is not a regular file: refusing to "
                                    "open it")
            except BaseException:
                os.close(fd)
                raise
        return fd

    @overload
    def open_read(self, p: str, *, limit: int = ..., text: Literal[False] = ...) -> IO[bytes]:
        ...

    @overload
    def open_read(self, p: str, *, limit: int = ..., text: Literal[True]) -> IO[str]: ...

    def open_read(self, p: str, *, limit: int = MAX_READ, text: bool = False) -> IO[Any]:
        """A file object of a regular file, for readers that stream it line by line (with
        ``text``: UTF-8, undecodable bytes replaced). The checks of :meth:`read_bytes`: a
        FIFO or device is a HostError (/dev/null reads as empty), and so is a file whose size
        is over ``limit``. Absent: FileNotFoundError (an OSError, as for open())."""
        fd = self.open_fd(p, regular=False)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), p)
            null = stat.S_ISCHR(st.st_mode) and st.st_rdev == fsops.NULL_DEVICE
            if not null and not stat.S_ISREG(st.st_mode):
                raise HostError(f"{self.shown(p)} is not a regular file: refusing to read it")
            if st.st_size > limit:
                raise HostError(f"{self.shown(p)} is larger than {limit >> 20} MiB: refusing "
                                "to read it")
            # procfs files report size 0 and are bounded by the kernel; regular files by the
            # size checked above
            fh = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        if text:
            import io

            return io.TextIOWrapper(fh, encoding="utf-8", errors="replace")
        return fh

    def read_bytes(self, p: str, *, limit: int = MAX_READ) -> bytes | None:
        """Contents of a regular file, or None if it does not exist (or is a directory).
        Anything else (a FIFO, a device) or a file over ``limit`` is a HostError.
        PermissionError propagates so callers can mark a reading as 'needs root'."""
        return fsops.read_bytes(str(self.path(p)), limit, self.shown(p),
                                resolved=self._root_s != "/")

    def read_text(self, p: str, *, limit: int = MAX_READ) -> str | None:
        """:meth:`read_bytes` decoded as UTF-8 (undecodable bytes replaced)."""
        data = self.read_bytes(p, limit=limit)
        return None if data is None else data.decode("utf-8", errors="replace")

    def read_value(self, p: str) -> str | None:
        """A one-line kernel value, stripped (sysfs/procfs)."""
        text = self.read_text(p)
        return None if text is None else text.strip()

    def listdir(self, p: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(p)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk_files(self, p: str, *, max_dirs: int = 10000) -> list[WalkedFile]:
        """The regular files under directory ``p`` (sorted by path), walked without following
        any symlink (a linked directory or file is skipped, so nothing outside the directory
        is reached), at most ``max_dirs`` directories, depth first. Unreadable directories are
        skipped; a missing ``p`` gives []."""
        base = self.path(p)
        try:
            if not stat.S_ISDIR(os.lstat(base).st_mode):
                return []
        except OSError:
            return []
        hp = "/" + "/".join(fsops.normalize(self._check(p)))
        out: list[WalkedFile] = []
        stack = [""]
        seen = 0
        while stack and seen < max_dirs:
            rel_dir = stack.pop()
            seen += 1
            try:
                with os.scandir(f"{base}/{rel_dir}" if rel_dir else base) as it:
                    entries = list(it)
            except OSError:
                continue
            for e in entries:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    out.append(WalkedFile(f"{hp.rstrip('/')}/{rel}", rel, st))
        out.sort(key=lambda f: f.rel)
        return out

    def pids(self, *, include_self: bool = False) -> list[int]:
        """The process IDs in /proc, ascending (the tree's, under --root); on the live system
        this process is left out unless ``include_self`` (it is the one asking)."""
        me = -1 if self.offline or include_self else os.getpid()
        return sorted(int(d) for d in self.listdir("/proc") if d.isdigit() and int(d) != me)

    def pids_by_comm(self, comms: set[str]) -> dict[str, list[int]]:
        """PIDs (ascending) per /proc/PID/comm, for the names in ``comms``, in one pass over
        /proc; a process that exits meanwhile is skipped. Names absent from the result have
        no process."""
        out: dict[str, list[int]] = {}
        for pid in self.pids(include_self=True):
            try:
                c = self.read_value(f"/proc/{pid}/comm")
            except OSError:
                continue
            if c in comms:
                out.setdefault(c, []).append(pid)
        return out

    def glob(self, pattern: str) -> list[str]:
        """Glob a host path pattern (``*?[]`` within one component); returns host paths
        (sorted). Every directory is listed through :meth:`listdir`, inside the root."""
        if "**" in pattern:
            raise HostError(f"glob {pattern!r}: '**' is not supported")
        found = [""]
        for comp in fsops.normalize(self._check(pattern)):
            nxt: list[str] = []
            for d in found:
                if glob.has_magic(comp):
                    nxt.extend(f"{d}/{n}" for n in fnmatch.filter(self.listdir(d or "/"), comp))
                elif self.exists(f"{d}/{comp}"):
                    nxt.append(f"{d}/{comp}")
            found = nxt
        return sorted(f for f in found if f)

    def file_state(self, p: str) -> FileState:
        real = self.lpath(p)
        try:
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            return FileState(exists=False)
        if stat.S_ISLNK(st.st_mode):
            return FileState(exists=True, link_target=os.readlink(real), mode=None)
        if not stat.S_ISREG(st.st_mode):
            raise HostError(f"{self.shown(p)} is not a regular file")
        data = fsops.read_bytes(str(real), MAX_READ, self.shown(p))
        if data is None:  # replaced by a directory since the lstat
            raise HostError(f"{self.shown(p)} is not a regular file")
        return FileState(True, data, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    # -- writing -----------------------------------------------------------------------------
    # Every write walks the directories from a descriptor of the root with O_NOFOLLOW and acts
    # on the last one's descriptor: no symlink on the way, none swapped in after the check.
    def write_file(self, p: str, data: bytes, *, mode: int = 0o644,
                   uid: int | None = None, gid: int | None = None) -> None:
        fsops.atomic_write(self.root, self._check(p), data, mode=mode, uid=uid, gid=gid)

    def makedirs(self, p: str, mode: int = 0o755) -> list[str]:
        """Create missing directories; return the host paths created (outermost first)."""
        return fsops.makedirs(self.root, self._check(p), mode)

    def remove(self, p: str) -> None:
        fsops.remove(self.root, self._check(p))

    def remove_temp_files(self, p: str) -> list[str]:
        """Remove the temp files hosttune's own writes of ``p`` leave when killed mid-write
        (.NAME.hosttune-tmp-PID next to it); return the host paths removed."""
        parts = fsops.normalize(self._check(p))
        if not parts:
            return []
        parent = "/" + "/".join(parts[:-1])
        prefix = f".{parts[-1]}{fsops.TMP_MARK}"
        gone = []
        for n in self.listdir(parent):
            if n.startswith(prefix) and n[len(prefix):].isdigit():
                self.remove(f"{parent.rstrip('/')}/{n}")
                gone.append(f"{parent.rstrip('/')}/{n}")
        return gone

    def rmdir_if_empty(self, p: str) -> bool:
        return fsops.rmdir(self.root, self._check(p))

    def rmtree(self, p: str) -> None:
        fsops.rmtree(self.root, self._check(p))

    def rename(self, src: str, dst: str) -> None:
        fsops.rename(self.root, self._check(src), self._check(dst))

    def chmod(self, p: str, mode: int) -> None:
        """chmod a file (never through a symlink)."""
        fsops.chmod(self.root, self._check(p), mode)

    def link(self, src: str, dst: str) -> None:
        """A hard link ``dst`` of ``src``; FileExistsError when ``dst`` exists."""
        fsops.link(self.root, self._check(src), self._check(dst))

    def set_dir(self, p: str, mode: int, *, uid: int = -1, gid: int = -1,
                create: bool = False) -> None:
        """chmod/chown directory ``p`` (creating it when ``create``), never via a symlink."""
        fsops.set_dir(self.root, self._check(p), mode, uid, gid, create=create)

    def symlink(self, target: str, p: str) -> None:
        fsops.symlink(self.root, target, self._check(p))

    def write_kernel(self, p: str, value: str) -> None:
        """Write a runtime kernel value (/proc/sys, /sys) like ``echo value > file`` (newline
        included, which every kernel parser accepts). Under --root this writes the fixture."""
        if not value.endswith("\n"):
            value += "\n"
        fsops.write_kernel_file(self.lpath(p), value)

    # -- commands ----------------------------------------------------------------------------
    def run(self, argv: list[str], *, timeout_s: float = 60.0, input_text: str | None = None,
            check: bool = False, confined: bool = False) -> CommandResult:
        """``confined``: the command is pointed at the root by its own argument (``--root``,
        ``--prefix``), so it runs under --root too; every other command is only recorded."""
        return self.runner.run(argv, timeout_s=timeout_s, input_text=input_text, check=check,
                               confined=confined)

    def sync(self) -> None:
        """Flush what an external command wrote (groupadd, update-grub do not fsync): a step
        is recorded as done only once its effect would survive a power cut."""
        os.sync()

    def which(self, name: str) -> str | None:
        """Find a program in the standard locations of the (mapped) root."""
        for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            cand = f"{d}/{name}"
            if self.is_file(cand) and self.access(cand, os.X_OK):
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
