"""The store checksum: xxh3-64 of every 32 MiB leaf (computed by the copy threads, in any
order), then xxh3-64 of the leaf digests in file order. A tree, so parallel copying does not
serialise on one running hash state."""

from __future__ import annotations

import xxhash

LEAF_LOG2 = 25  # 32 MiB: also the copy chunk


def leaf_digest(data: memoryview | bytes) -> int:
    return int(xxhash.xxh3_64_intdigest(data))


def combine(digests: list[int]) -> int:
    return int(xxhash.xxh3_64_intdigest(b"".join(d.to_bytes(8, "little") for d in digests)))


def checksum_bytes(data: bytes, leaf_log2: int = LEAF_LOG2) -> int:
    """Reference implementation over an in-memory buffer (tests, small files)."""
    leaf = 1 << leaf_log2
    return combine([leaf_digest(data[i:i + leaf]) for i in range(0, max(len(data), 1), leaf)])
