"""A cache of validated profiles, so `hosttune audit` does not import PyYAML and parse the
``extends`` chain on every run (~0.05 s of a 0.3 s budget on a 2-vCPU VM).

JSON, never pickle: the cache lives in the invoking user's cache directory and must not be a
code-execution vector. An entry is keyed by the profile reference (name or path, and the
directory a relative path is resolved in), the hosttune version and the schema module's stat.
It records the stat (inode, size, mtime, ctime) of every file of the ``extends`` chain, like a
.pyc records its source's, and holds the merged YAML, where each key came from, and the
validated profile as msgspec encodes the schema's Structs. A hit needs every file's stat to
match; the profile is decoded straight back into the same Struct types (``msgspec.json``,
typed: tuples, integer NUMA-node keys and every section class come back as they were, and each
section's rules run again), so a cached profile is the very object a validated one is.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from hosttune import __version__

if TYPE_CHECKING:
    from hosttune.profile.schema import Profile

_SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.py")

# File times come from the kernel's coarse clock (one jiffy: up to 10 ms), so a file rewritten
# within the same tick with the same size keeps its stamp. Like git's "racy" index entries: a
# file modified less than this long ago is not trusted (no stamp, so no hit and no entry).
RACY_NS = 20_000_000
FORMAT = 3  # of an entry: part of the key, so old entries are never read


def cache_dir() -> Path | None:
    """~/.cache/hosttune/profiles, or None (no cache): when HOSTTUNE_NO_CACHE is set, or when
    the cache directory (or, before it exists, the nearest existing parent) belongs to someone
    else - `sudo -E hosttune` keeps the user's HOME, and root must not leave files there."""
    if os.environ.get("HOSTTUNE_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "hosttune" / "profiles"
    probe = d
    while True:
        try:
            owner = os.stat(probe).st_uid
            break
        except FileNotFoundError:
            if probe.parent == probe:
                return None
            probe = probe.parent
        except OSError:
            return None
    return d if owner == os.geteuid() else None


def stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time_ns() - st.st_mtime_ns < RACY_NS:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def cache_key(ref: str, base: str) -> str:
    """``base``: the directory a relative path is resolved in ("" for built-in names)."""
    import xxhash  # not hashlib: loading OpenSSL costs audit ~3 ms, xxhash ~0.5 ms

    st = os.stat(_SCHEMA)
    return xxhash.xxh3_128_hexdigest(
        f"{FORMAT}|{__version__}|{st.st_mtime_ns}|{st.st_size}|{base}|{ref}".encode())


class Entry(msgspec.Struct, frozen=True):
    profile: Profile
    files: list[str]  # display names, child first
    origin: dict[str, str]
    raw: dict[str, Any]


_decoder: msgspec.json.Decoder[Any] | None = None


def _doc_type() -> Any:
    """The Struct of a cache file (built on first use: it imports the schema)."""

    from hosttune.profile.schema import Profile

    return msgspec.defstruct("Doc", [
        ("stamps", list[tuple[str, list[int]]]),  # (path, stamp) of each file of the chain
        ("files", list[str]), ("origin", dict[str, str]), ("raw", dict[str, Any]),
        ("profile", Profile),
    ], forbid_unknown_fields=True)


def load(key: str) -> Entry | None:
    """The cached entry, if every file of its chain is unchanged."""
    global _decoder
    d = cache_dir()
    if d is None:
        return None
    p = d / f"{key}.json"
    try:
        st = os.stat(p, follow_symlinks=False)
        # only trust our own, private files
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError:
        return None

    if _decoder is None:
        _decoder = msgspec.json.Decoder(_doc_type())
    try:
        doc = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError):
        return None  # not ours, truncated, or from a schema that changed meanwhile
    if not doc.stamps or any(stamp(path) != st for path, st in doc.stamps):
        return None  # a file of the chain changed (or is gone): parse and validate again
    return Entry(doc.profile, list(doc.files), dict(doc.origin), dict(doc.raw))


def _plain(v: Any) -> bool:
    """Whether ``v`` is JSON as it is (a YAML date, set or binary is not: not cached).
    Integer keys are JSON object keys as strings: they come back as strings in ``raw``,
    as everywhere ``raw`` is written (bootunit.profile_copy_text); the profile keeps them."""
    if isinstance(v, dict):
        if not all(isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool))
                   for k in v):
            return False
        if len({str(k) for k in v}) != len(v):  # 0 and '0': one JSON key
            return False
        return all(_plain(x) for x in v.values())
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    if isinstance(v, float):
        return v - v == 0  # not nan or +-inf (JSON has neither)
    return v is None or isinstance(v, str | int)


def store(key: str, stamps: list[tuple[str, list[int] | None]], entry: Entry) -> None:
    """``stamps``: (path, `stamp`) of every file of the chain, taken *before* it was read, so a
    file changed while it was being loaded is seen as changed on the next load rather than
    cached with the old content."""
    d = cache_dir()
    if d is None or any(st is None for _, st in stamps):
        return
    if not _plain(entry.raw):
        return  # e.g. a YAML date in the raw profile: not JSON, not cached

    try:
        text = msgspec.json.encode({"stamps": [[p, st] for p, st in stamps],
                                    "files": entry.files, "origin": entry.origin,
                                    "raw": entry.raw, "profile": entry.profile})
    except (TypeError, ValueError, OverflowError):
        return
    tmp = d / f".{key}.{os.getpid()}.tmp"
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a cache is an optimisation only
