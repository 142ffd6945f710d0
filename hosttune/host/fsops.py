"""File operations that never follow symlinks planted in target paths.

Atomic replace: write a temp file in the same directory, fsync it, rename over the target,
fsync the directory. Kernel files (/proc, /sys) are written in place: they are not regular
files and rename does not apply to them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from hosttune.errors import HostError


def _check_no_symlink(path: Path, stop_at: Path) -> None:
    """Refuse if any component of ``path`` below ``stop_at`` is a symlink.

    Guards against a symlink planted in a target path redirecting a root-owned write
    (e.g. /etc/sysctl.d/90-hosttune.conf -> /etc/shadow)."""
    path = Path(os.path.abspath(path))
    stop = Path(os.path.abspath(stop_at))
    cur = path
    while cur != stop and cur != cur.parent:
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            cur = cur.parent
            continue
        if stat.S_ISLNK(st.st_mode):
            raise HostError(f"refusing to write through symlink {cur}")
        cur = cur.parent


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    root: Path = Path("/"),
    uid: int | None = None,
    gid: int | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically (temp + fsync + rename + fsync dir)."""
    _check_no_symlink(path, root)
    parent = path.parent
    tmp = parent / f".{path.name}.hosttune-tmp-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode & 0o7777)
    except FileExistsError:
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode & 0o7777)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode & 0o7777)  # umask must not narrow the mode
            if uid is not None and gid is not None:
                os.fchown(fh.fileno(), uid, gid)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_kernel_file(path: Path, value: str, *, root: Path = Path("/")) -> None:
    """Write a /proc or /sys value in place (one write(2), like ``echo v > file``)."""
    _check_no_symlink_kernel(path, root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_TRUNC)
    except OSError as err:
        raise HostError(f"cannot open {path} for writing: {os.strerror(err.errno or 0)}") from err
    try:
        os.write(fd, value.encode())
    except OSError as err:
        msg = os.strerror(err.errno or 0)
        raise HostError(f"writing {value.strip()!r} to {path} failed: {msg}") from err
    finally:
        os.close(fd)


def _check_no_symlink_kernel(path: Path, root: Path) -> None:
    # sysfs itself is full of symlinks (/sys/class/..., node dirs); only the final component
    # must not be one. O_NOFOLLOW enforces that; nothing else to check.
    del path, root


def is_ebusy(err: BaseException) -> bool:
    cause = err.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.EBUSY
