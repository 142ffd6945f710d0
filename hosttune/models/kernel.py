"""Small libc/syscall doors the store needs and Python lacks: fallocate(2), set_mempolicy(2),
userfaultfd(2)
(statfs f_type belongs to the host door: hosttune.host.statfs). ctypes releases the GIL
around foreign calls, so worker threads fault and copy in parallel."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform

from hosttune.errors import HostError

# dlopen(NULL): the symbols the interpreter already has, libc's among them (glibc and musl).
# ctypes.util.find_library would run `ldconfig -p` in a subprocess at every start (~2-8 ms).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_libc.fallocate.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long

# set_mempolicy(2) numbers (arch/*/entry/syscalls, include/uapi/asm-generic/unistd.h).
_SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 270}
MPOL_DEFAULT = 0
MPOL_BIND = 2


def fallocate(fd: int, offset: int, length: int) -> None:
    """Allocate the huge pages of [offset, offset+length) now. Unlike a first touch through a
    mapping (SIGBUS when the pool or the bound node runs dry), hugetlbfs_fallocate returns
    ENOSPC/ENOMEM, and it allocates under the calling thread's memory policy."""
    if _libc.fallocate(fd, 0, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def set_mempolicy_bind(node: int | None) -> None:
    """Bind this thread's allocations to ``node`` (None: back to the default policy)."""
    nr = _SYS_SET_MEMPOLICY.get(platform.machine())
    if nr is None:
        raise HostError(f"--node is not supported on {platform.machine()}")
    if node is None:
        r = _libc.syscall(nr, MPOL_DEFAULT, None, ctypes.c_ulong(0))
    else:
        words = node // 64 + 1
        mask = (ctypes.c_ulong * words)()
        mask[node // 64] = 1 << (node % 64)
        # maxnode counts bits; the kernel ignores the last one (mm/mempolicy.c get_nodes).
        r = _libc.syscall(nr, MPOL_BIND, mask, ctypes.c_ulong(words * 64 + 1))
    if r != 0:
        e = ctypes.get_errno()
        raise HostError(f"set_mempolicy(node {node}) failed: {os.strerror(e)}")


# userfaultfd(2): arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h.
# Other architectures (ppc64le, s390x) copy with preadv: their ioctl encoding differs.
_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
_UFFD_USER_MODE_ONLY = 1  # 5.11+: allowed without privilege (vm.unprivileged_userfaultfd=0)
_UFFD_API = 0xAA
_UFFD_FEATURE_SIGBUS = 1 << 7  # 4.14+: a touch of an unfilled page is SIGBUS, never a hang
_UFFDIO_COPY_NR = 0x03
_MODE_MISSING = 1


def _iowr(nr: int, size: int) -> int:
    # _IOWR(UFFDIO, nr, struct) in include/uapi/asm-generic/ioctl.h (x86 and arm64 use it)
    return (3 << 30) | (size << 16) | (_UFFD_API << 8) | nr


class _Api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _Register(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _CopyArg(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


_UFFDIO_API = _iowr(0x3F, ctypes.sizeof(_Api))
_UFFDIO_REGISTER = _iowr(0x00, ctypes.sizeof(_Register))
_UFFDIO_COPY = _iowr(_UFFDIO_COPY_NR, ctypes.sizeof(_CopyArg))
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def buffer_address(buf: mmap.mmap) -> int:
    """The address of a writable mapping's first byte (the ctypes view is dropped at once, so
    the mapping can still be closed)."""
    anchor = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


class PageFiller:
    """Fills the huge pages of a MAP_SHARED hugetlbfs mapping with UFFDIO_COPY: the kernel
    allocates each page and copies a whole page from a user buffer into it, without zeroing it
    first - a page faulted by preadv is zeroed (folio_zero_user; clear_huge_page in older
    kernels) and then overwritten
    (mm/hugetlb.c hugetlb_mfill_atomic_pte; Documentation/admin-guide/mm/userfaultfd.rst).
    Shared hugetlbfs ranges take UFFDIO_COPY since Linux 4.11."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def register(cls, addr: int, length: int) -> PageFiller | None:
        """A filler for [addr, addr+length), or None where userfaultfd is unavailable: an
        older kernel, CONFIG_USERFAULTFD off, a seccomp filter (Docker's default profile),
        another architecture. The caller then copies with preadv."""
        nr = _SYS_USERFAULTFD.get(platform.machine())
        if nr is None:
            return None
        fd = _libc.syscall(nr, os.O_CLOEXEC | _UFFD_USER_MODE_ONLY)
        if fd < 0:
            return None
        api = _Api(_UFFD_API, _UFFD_FEATURE_SIGBUS, 0)
        reg = _Register(addr, length, _MODE_MISSING, 0)
        if (_libc.ioctl(fd, _UFFDIO_API, ctypes.byref(api)) != 0
                or _libc.ioctl(fd, _UFFDIO_REGISTER, ctypes.byref(reg)) != 0
                or not reg.ioctls & (1 << _UFFDIO_COPY_NR)):
            os.close(fd)
            return None
        return cls(fd)

    def copy(self, dst: int, src: int, length: int) -> None:
        """Allocate the pages of [dst, dst+length) and fill them from [src, src+length);
        ``length`` is a whole number of the mapping's pages."""
        done = 0
        while done < length:
            arg = _CopyArg(dst + done, src + done, length - done, 0, 0)
            if _libc.ioctl(self.fd, _UFFDIO_COPY, ctypes.byref(arg)) == 0:
                return
            e = ctypes.get_errno()
            if e != errno.EAGAIN:  # EAGAIN: the mapping changed under the copy; go on
                raise OSError(e, os.strerror(e))
            done += max(arg.copy, 0)

    def close(self) -> None:
        """Unregister the range (closing the descriptor does it): from now on a touch of the
        mapping faults in a zeroed page as usual."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
