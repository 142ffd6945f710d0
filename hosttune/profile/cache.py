"""A cache of validated profiles, so `hosttune audit` pays neither PyYAML nor pydantic on every
run (together ~0.15 s of a 0.3 s budget on a 2-vCPU VM).

JSON, never pickle: the cache lives in the invoking user's cache directory and must not be a
code-execution vector. An entry is keyed by the profile reference (name or path, and the
directory a relative path is resolved in), the hosttune version and the schema module's stat.
It records the stat (inode, size, mtime, ctime) of every file of the ``extends`` chain, like a
.pyc records its source's, and holds the merged YAML, where each key came from, and the
validated profile in view.py's tagged JSON. A hit needs every file's stat to match; the profile
is rebuilt with ``model_construct`` (no YAML parsing, no validation) or, for audit, as views
(no pydantic at all). This module imports pydantic only to build models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hosttune import __version__
from hosttune.profile import view

_SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.py")

# File times come from the kernel's coarse clock (one jiffy: up to 10 ms), so a file rewritten
# within the same tick with the same size keeps its stamp. Like git's "racy" index entries: a
# file modified less than this long ago is not trusted (no stamp, so no hit and no entry).
RACY_NS = 20_000_000
FORMAT = 2  # of an entry (view.encode's tags): part of the key, so old entries are never read


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
    st = os.stat(_SCHEMA)
    h = hashlib.sha256()
    h.update(f"{FORMAT}|{__version__}|{st.st_mtime_ns}|{st.st_size}|{base}|{ref}".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    profile: Any  # the schema's Profile, or a view.View of one
    files: list[str]  # display names, child first
    origin: dict[str, str]
    raw: dict[str, Any]


def _models(name: str, fields: dict[str, Any]) -> Any:
    from hosttune.profile import schema

    cls = getattr(schema, name, None)
    if not (isinstance(cls, type) and hasattr(cls, "model_construct")):
        raise KeyError(name)  # an entry from a schema that no longer has this model
    return cls.model_construct(**fields)


def load(key: str, *, views: bool = False) -> Entry | None:
    """The cached entry, if every file of its chain is unchanged. ``views``: the profile as
    `view.View` objects instead of the pydantic models (audit only)."""
    d = cache_dir()
    if d is None:
        return None
    p = d / f"{key}.json"
    try:
        st = os.stat(p, follow_symlinks=False)
        # only trust our own, private files
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
        stamps = data["stamps"]
        if not stamps or any(stamp(path) != st for path, st in stamps):
            return None  # a file of the chain changed (or is gone): parse and validate again
        profile = view.decode(data["profile"], view.View if views else _models)
        return Entry(profile, list(data["files"]), dict(data["origin"]), dict(data["raw"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def store(key: str, stamps: list[tuple[str, list[int] | None]], entry: Entry) -> None:
    """``stamps``: (path, `stamp`) of every file of the chain, taken *before* it was read, so a
    file changed while it was being loaded is seen as changed on the next load rather than
    cached with the old content."""
    d = cache_dir()
    if d is None or any(st is None for _, st in stamps):
        return
    try:
        data = {"stamps": [[p, st] for p, st in stamps], "files": entry.files,
                "origin": entry.origin, "raw": entry.raw,
                "profile": view.encode(entry.profile)}
        text = json.dumps(data)
    except (TypeError, ValueError):
        return  # e.g. a YAML date in the raw profile: not JSON, not cached
    tmp = d / f".{key}.{os.getpid()}.tmp"
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a cache is an optimisation only
