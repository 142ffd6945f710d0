"""Small libc/syscall doors the store needs and Python lacks: fallocate(2), set_mempolicy(2)
(statfs f_type belongs to the host door: hosttune.host.statfs). ctypes releases the GIL
around foreign calls, so worker threads fault and copy in parallel."""

from __future__ import annotations

import ctypes
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
