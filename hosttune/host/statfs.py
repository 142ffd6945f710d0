"""statfs(2) f_type, which os.statvfs does not give (a hugetlbfs mount is told from the
directory under it by its magic number). Imported lazily: ctypes costs an import."""

from __future__ import annotations

import ctypes
import os

HUGETLBFS_MAGIC = 0x958458F6  # include/uapi/linux/magic.h

# dlopen(NULL): the symbols the interpreter already has, libc's among them (glibc and musl).
# ctypes.util.find_library would run `ldconfig -p` in a subprocess at every start (~2-8 ms).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.statfs.restype = ctypes.c_int


def fs_type(path: str) -> int:
    """statfs(2) f_type of the filesystem holding real path ``path`` (the first field of
    struct statfs on every 64-bit Linux ABI)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int.from_bytes(buf.raw[:8], "little") & 0xFFFFFFFF
