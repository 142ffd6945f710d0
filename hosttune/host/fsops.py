"""File operations confined to a root directory that never follow planted symlinks.

Two rules, for two kinds of access:

* Reads resolve a host path *inside* the root, component by component, the way
  openat2(2) with RESOLVE_IN_ROOT does: ``..`` stops at the root and an absolute symlink target
  starts again at the root, so ``TREE/etc -> /etc`` can never reach the live /etc
  [openat2(2); fs/namei.c, nd_jump_root]. :func:`resolve_in_root` does that walk with lstat and
  readlink (openat2 is not in Python's os module; a ctypes call would cost audit an import).
* Writes walk the parent directories with ``O_NOFOLLOW | O_DIRECTORY`` from a descriptor of the
  root and act on the last directory's descriptor (``*at`` calls): a symlink anywhere on the way
  is refused, and nothing swapped in after the check can redirect the write.

Atomic replace: write a temp file in the same directory, fsync it, rename over the target,
fsync the directory. Kernel files (/proc, /sys) are written in place: they are not regular
files and rename does not apply to them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from hosttune.errors import HostError

MAX_LINKS = 40  # MAXSYMLINKS in include/linux/namei.h: the kernel gives ELOOP after 40
TMP_MARK = ".hosttune-tmp-"  # every temp file hosttune creates has this in its name
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def normalize(p: str) -> list[str]:
    """The components of an absolute host path, with '.' dropped and '..' clamped at the root
    (as in a chroot: ``/../../tmp`` is ``/tmp``)."""
    out: list[str] = []
    for c in p.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if out:
                out.pop()
            continue
        out.append(c)
    return out


def resolve_in_root(root: str, p: str, *, follow_last: bool = True) -> str:
    """The real path of host path ``p`` under ``root``, every symlink resolved inside root.

    Components that do not exist are kept as written (normalised), so the result names where
    a new file would go. ``follow_last=False`` leaves the last component alone (for lstat,
    readlink, unlink)."""
    base = root.rstrip("/")
    pending = p.split("/")
    pending.reverse()
    done: list[str] = []
    cur = base  # base + "/" + "/".join(done), kept in step (audit resolves ~500 paths)
    links = 0
    lstat, is_link = os.lstat, stat.S_ISLNK
    while pending:
        c = pending.pop()
        if c == "" or c == ".":
            continue
        if c == "..":
            if done:
                done.pop()
                cur = cur[:cur.rindex("/")]
            continue
        cand = f"{cur}/{c}"
        if not pending and not follow_last:
            return cand
        try:
            st = lstat(cand)
        except (FileNotFoundError, NotADirectoryError):
            # the rest does not exist: lexical from here on (nothing left to follow)
            pending.reverse()
            rest = normalize("/".join([*done, c, *pending]))
            return base + "/" + "/".join(rest) if rest else (base or "/")
        if not is_link(st.st_mode):
            done.append(c)
            cur = cand
            continue
        links += 1
        if links > MAX_LINKS:
            raise HostError(f"{p}: too many levels of symbolic links (under {root})")
        target = os.readlink(cand)
        if target.startswith("/"):
            done = []  # an absolute target starts again at the root, never at the live /
            cur = base
        parts = target.split("/")
        parts.reverse()
        pending.extend(parts)
    return cur or "/"


def shown(root: Path, parts: list[str]) -> str:
    """A path for messages: the host path, plus the tree it lives in."""
    hp = "/" + "/".join(parts)
    return hp if str(root) == "/" else f"{hp} (under {root})"


def open_dir(root: Path, parts: list[str], *, create: int | None = None,
             created: list[str] | None = None) -> int:
    """A descriptor of directory ``root/parts`` reached without following any symlink.

    ``create`` (a mode) makes missing directories on the way; their host paths are appended to
    ``created``. Raises HostError on a symlink, FileNotFoundError when a part is missing."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, c in enumerate(parts):
            try:
                nfd = os.open(c, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                os.mkdir(c, create, dir_fd=fd)
                if created is not None:
                    created.append("/" + "/".join(parts[:i + 1]))
                nfd = os.open(c, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.lstat(c, dir_fd=fd)
                where = shown(root, parts[:i + 1])
                if stat.S_ISLNK(st.st_mode):
                    raise HostError(f"refusing to write through symlink {where}") from err
                raise HostError(f"{where} is not a directory") from err
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def parent_fd(root: Path, p: str, *, create: int | None = None,
              created: list[str] | None = None) -> tuple[int, str, list[str]]:
    """(descriptor of the parent directory, last component, all components) of host path p."""
    parts = normalize(p)
    if not parts:
        raise HostError(f"{p}: refusing to change the root directory itself")
    return open_dir(root, parts[:-1], create=create, created=created), parts[-1], parts


def _refuse_link(dfd: int, name: str, root: Path, parts: list[str]) -> None:
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise HostError(f"refusing to write through symlink {shown(root, parts)}")


def atomic_write(root: Path, p: str, data: bytes, *, mode: int = 0o644,
                 uid: int | None = None, gid: int | None = None) -> None:
    """Replace host path ``p`` under ``root`` with ``data`` atomically (temp + fsync + rename
    + fsync dir), never through a symlink."""
    dfd, name, parts = parent_fd(root, p)
    try:
        _refuse_link(dfd, name, root, parts)
        tmp = f".{name}{TMP_MARK}{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, mode & 0o7777, dir_fd=dfd)
        except FileExistsError:
            os.unlink(tmp, dir_fd=dfd)
            fd = os.open(tmp, flags, mode & 0o7777, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), mode & 0o7777)  # umask must not narrow the mode
                if uid is not None and gid is not None:
                    os.fchown(fh.fileno(), uid, gid)
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def open_at(root: Path, p: str, flags: int, mode: int = 0o644) -> int:
    """os.open of host path ``p`` from a descriptor of its directory, reached without
    following any symlink (for files created by streaming writers, such as the model store's
    temp file); ``flags`` should carry O_NOFOLLOW."""
    dfd, name, _ = parent_fd(root, p)
    try:
        return os.open(name, flags, mode, dir_fd=dfd)
    finally:
        os.close(dfd)


def link(root: Path, src: str, dst: str) -> None:
    """link(2) ``dst`` to ``src`` (both host paths), never through a symlinked directory;
    FileExistsError when ``dst`` exists (link never overwrites)."""
    sfd, sname, _ = parent_fd(root, src)
    try:
        dfd, dname, _ = parent_fd(root, dst)
        try:
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def chmod(root: Path, p: str, mode: int) -> None:
    """chmod a file through a descriptor opened without following any symlink (Linux has no
    fchmodat(AT_SYMLINK_NOFOLLOW) for Python's os.chmod)."""
    dfd, name, parts = parent_fd(root, p)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dfd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise HostError(f"refusing to chmod through symlink {shown(root, parts)}") \
                    from err
            raise
        try:
            os.fchmod(fd, mode & 0o7777)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def makedirs(root: Path, p: str, mode: int = 0o755) -> list[str]:
    """Create the missing directories of host path ``p``; return those created (outermost
    first). Refuses to pass through a symlink."""
    created: list[str] = []
    parts = normalize(p)
    os.close(open_dir(root, parts, create=mode, created=created))
    return created


def remove(root: Path, p: str) -> None:
    try:
        dfd, name, _ = parent_fd(root, p)
    except FileNotFoundError:
        return
    try:
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return
        os.fsync(dfd)
    finally:
        os.close(dfd)


def rmdir(root: Path, p: str) -> bool:
    """Remove an empty directory (never a symlink); False when it is not there or not empty."""
    try:
        dfd, name, _ = parent_fd(root, p)
    except (FileNotFoundError, HostError):
        return False
    try:
        os.rmdir(name, dir_fd=dfd)
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def rmtree(root: Path, p: str) -> None:
    """Remove a directory tree without following symlinks in it or on the way to it."""
    try:
        dfd, name, parts = parent_fd(root, p)
    except FileNotFoundError:
        return
    try:
        _refuse_link(dfd, name, root, parts)
        shutil.rmtree(name, dir_fd=dfd)  # fd-based on Linux: safe against symlink races
    except FileNotFoundError:
        return
    finally:
        os.close(dfd)


def symlink(root: Path, target: str, p: str) -> None:
    dfd, name, _ = parent_fd(root, p)
    try:
        tmp = f".{name}{TMP_MARK}{os.getpid()}"
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp, dir_fd=dfd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)


def rename(root: Path, src: str, dst: str) -> None:
    sfd, sname, _ = parent_fd(root, src)
    try:
        dfd, dname, _ = parent_fd(root, dst)
        try:
            os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
        os.fsync(sfd)
    finally:
        os.close(sfd)


def set_dir(root: Path, p: str, mode: int, uid: int, gid: int, *, create: bool) -> None:
    """chown/chmod directory ``p`` through a descriptor (never a symlink); create it first
    (mode 0700) when ``create``."""
    dfd, name, parts = parent_fd(root, p)
    try:
        if create:
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise HostError(f"{shown(root, parts)} is not a directory (or is a symlink)") \
                    from err
            raise
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode & 0o7777)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_kernel_file(path: Path, value: str) -> None:
    """Write a /proc or /sys value in place (one write(2), like ``echo v > file``).

    ``path`` has its directories already resolved inside the root; sysfs itself is full of
    symlinks (/sys/class/..., cpuN/cpufreq -> ../cpufreq/policyN), so only the last component
    must not be one, which O_NOFOLLOW enforces."""
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


NULL_DEVICE = os.makedev(1, 3)  # /dev/null (Documentation/admin-guide/devices.txt)


def read_bytes(path: str, limit: int, shown_as: str, *, resolved: bool = True) -> bytes | None:
    """Contents of a regular file (None if absent or a directory), at most ``limit`` bytes.

    O_NONBLOCK keeps a FIFO from blocking the open; fstat then refuses anything that is not a
    regular file (a FIFO, /dev/zero, a socket) before a byte is read. A ``resolved`` path
    (resolve_in_root's result) has no symlink left: O_NOFOLLOW catches one swapped in since.
    The live root's own links (/etc/os-release -> ../usr/lib/os-release) are followed."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if resolved else 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise HostError(f"{shown_as} is a symlink (it changed while being read)") from err
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return None
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == NULL_DEVICE:
            # A symlink to /dev/null is how systemd masks a unit (systemctl mask): an empty
            # file, neither endless nor blocking, so it reads as empty like systemd reads it.
            return b""
        if not stat.S_ISREG(st.st_mode):
            raise HostError(f"{shown_as} is not a regular file: refusing to read it")
        chunks: list[bytes] = []
        total = 0
        while True:
            # procfs and sysfs files report size 0: read until EOF, up to the limit
            b = os.read(fd, min(1 << 20, limit + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > limit:
                raise HostError(f"{shown_as} is larger than {limit >> 20} MiB: refusing to "
                                "read it")
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_ebusy(err: BaseException) -> bool:
    cause = err.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.EBUSY
