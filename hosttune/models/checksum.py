"""The store checksum: xxh3-64 of every 32 MiB leaf (computed by the copy threads, in any
order), then xxh3-64 of the leaf digests in file order. A tree, so parallel copying does not
serialise on one running hash state.

The copy hashes each leaf as it goes: a thread reads a PIECE (2 MiB) of its leaf into its page
buffer (for UFFDIO_COPY) or straight into the store mapping and feeds that piece to the leaf's
streaming xxh3 state while it is still in the core's cache, then reads the next piece.
Streaming xxh3 gives the same digest as the one-shot hash of the whole leaf, so the checksum
(and the trailer that records it) is exactly what earlier versions wrote with a second pass
over each 32 MiB leaf. Measured side by side on a 2-vCPU VM (bench/bench_checksum_pieces.py,
docs/benchmarks.md): the second pass cost ~25% of the copy rate; hashing pieces in cache costs
what xxh3 costs (~45-60 GB/s per core here, against a copy of ~6-7 GB/s per core: ~10-15%).
2 MiB pieces - one fresh huge page per preadv - used the least CPU; 256-512 KiB pieces paid
more in Python-level iterations and preadv calls than they gained in cache hits. xxhash releases the
GIL in streaming ``update`` (every version since 3; xxhash 4 also in the one-shot functions
above 64 KiB), so the copy threads hash in parallel.
"""

from __future__ import annotations

import xxhash

LEAF_LOG2 = 25  # 32 MiB: also the copy chunk
PIECE = 2 << 20  # bytes read into the mapping, then hashed, at a time (see above)


def new_leaf() -> xxhash.xxh3_64:
    """A streaming state for one leaf: ``update`` it with the leaf's pieces in order;
    ``intdigest()`` equals `leaf_digest` of the whole leaf."""
    return xxhash.xxh3_64()


def leaf_digest(data: memoryview | bytes) -> int:
    return int(xxhash.xxh3_64_intdigest(data))


def combine(digests: list[int]) -> int:
    return int(xxhash.xxh3_64_intdigest(b"".join(d.to_bytes(8, "little") for d in digests)))


def checksum_bytes(data: bytes, leaf_log2: int = LEAF_LOG2) -> int:
    """Reference implementation over an in-memory buffer (tests, small files)."""
    leaf = 1 << leaf_log2
    return combine([leaf_digest(data[i:i + leaf]) for i in range(0, max(len(data), 1), leaf)])
