"""The store-file trailer: how a model's true size travels with it on hugetlbfs.

hugetlbfs files grow in whole huge pages only (ftruncate to a non-multiple -> EINVAL), so a
model of N bytes is stored as ``round_up(N + 64, page)`` bytes: data, zero padding, and these
64 bytes at the very end. When N is an exact multiple of the page size that costs one more
page. No sidecar file on another filesystem: the CLI and the C shim
(shim/hosttune_shim.c, keep in sync) read the same 64 bytes.

Layout (little-endian):
  0  8  magic b"HTMODEL\\0"
  8  4  version (1)
 12  4  trailer length (64)
 16  8  true size in bytes
 24  8  huge page size in bytes (must equal the file's st_blksize)
 32  4  checksum algorithm (0 none, 1 xxh3-64 tree, see checksum.py)
 36  4  log2 of the checksum leaf size
 40  8  checksum
 48  8  load time (Unix seconds)
 56  8  FNV-1a 64 of bytes 0..55 (check value)
"""

from __future__ import annotations

import struct

import msgspec

MAGIC = b"HTMODEL\0"
VERSION = 1
TRAILER_LEN = 64
_FMT = "<8sIIQQIIQQ"  # 56 bytes, then the check value

ALGO_NONE = 0
ALGO_XXH3_TREE = 1
ALGO_NAMES = {ALGO_NONE: "none", ALGO_XXH3_TREE: "xxh3-64-tree"}


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def stored_size(true_size: int, page_size: int) -> int:
    """Bytes a model of ``true_size`` occupies in the store (data + padding + trailer)."""
    return -(-(true_size + TRAILER_LEN) // page_size) * page_size


class Trailer(msgspec.Struct, frozen=True):
    true_size: int
    page_size: int
    algo: int = ALGO_NONE
    leaf_log2: int = 0
    checksum: int = 0
    loaded_at: int = 0

    @property
    def algo_name(self) -> str:
        return ALGO_NAMES.get(self.algo, f"unknown({self.algo})")

    def pack(self) -> bytes:
        head = struct.pack(_FMT, MAGIC, VERSION, TRAILER_LEN, self.true_size, self.page_size,
                           self.algo, self.leaf_log2, self.checksum, self.loaded_at)
        return head + struct.pack("<Q", fnv1a64(head))


def parse_trailer(raw: bytes, *, file_size: int, page_size: int) -> Trailer | None:
    """The trailer in the last 64 bytes of a store file, or None when they are not one (or
    disagree with the file's size or page size: then the file is not a store file)."""
    if len(raw) != TRAILER_LEN or not raw.startswith(MAGIC):
        return None
    head, (check,) = raw[:56], struct.unpack("<Q", raw[56:])
    if fnv1a64(head) != check:
        return None
    magic, version, tlen, size, page, algo, leaf, csum, at = struct.unpack(_FMT, head)
    del magic
    if version != VERSION or tlen != TRAILER_LEN or page != page_size or page <= 0:
        return None
    if stored_size(size, page) != file_size:
        return None
    return Trailer(size, page, algo, leaf, csum, at)
