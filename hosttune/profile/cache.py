"""A cache of validated profiles, so `hosttune audit` does not pay pydantic's schema build on
every run (it costs ~0.1 s of a 0.3 s budget on a 2-vCPU VM).

JSON, never pickle: the cache lives in the invoking user's cache directory and must not be a
code-execution vector. An entry is keyed by the merged YAML, the hosttune version and the
schema module's stat, and holds ``model_dump()`` output that was produced by a successful
validation; it is rebuilt into models with ``model_construct`` (no validation, no schema build).
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hosttune import __version__


def cache_dir() -> Path | None:
    if os.environ.get("HOSTTUNE_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hosttune" / "profiles"


def cache_key(raw: dict[str, Any]) -> str:
    from hosttune.profile import schema

    st = os.stat(schema.__file__)
    h = hashlib.sha256()
    h.update(f"{__version__}|{st.st_mtime_ns}|{st.st_size}|".encode())
    h.update(json.dumps(raw, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def load(key: str, cls: type[BaseModel]) -> BaseModel | None:
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
        return construct(cls, data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def store(key: str, model: BaseModel) -> None:
    d = cache_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(model.model_dump(mode="json"), fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        pass  # a cache is an optimisation only


def construct(cls: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    """Rebuild a validated dump into models without validating (types follow annotations)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for name in cls.model_fields:
        if name in data:
            values[name] = _value(hints[name], data[name])
    return cls.model_construct(**values)


def _value(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _value(typing.get_args(tp)[0], v)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in args:  # the first member the JSON value fits
            if isinstance(a, type) and issubclass(a, BaseModel) and isinstance(v, dict):
                return construct(a, v)
            if typing.get_origin(a) is dict and isinstance(v, dict):
                return _value(a, v)
            if typing.get_origin(a) in (list, tuple) and isinstance(v, list):
                return _value(a, v)
        return v
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return construct(tp, v)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_value(item, x) for x in v]
    if origin is tuple:  # JSON has no tuples: [min, max] clock ranges come back as lists
        targs = typing.get_args(tp)
        if len(targs) == 2 and targs[1] is Ellipsis:
            return tuple(_value(targs[0], x) for x in v)
        return tuple(_value(a, x) for a, x in zip(targs, v, strict=False)) if targs else tuple(v)
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {(int(k) if kt is int else k): _value(vt, x) for k, x in v.items()}
    return v
