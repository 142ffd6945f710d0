"""Validated profiles as JSON, and read-only views of them that need no pydantic.

The profile cache (cache.py) stores a validated profile in a tagged JSON form that keeps what
plain JSON loses: which mapping was which model class, tuples, and non-string mapping keys.
`decode` rebuilds it either into the pydantic models (``model_construct``, no validation) or,
for `hosttune audit`, into `View` objects: importing pydantic alone costs ~0.1 s (it pulls in
asyncio through typing_extensions), a third of audit's budget.

A `View` answers the same attribute reads as the model it stands for - every field, plus the
model's properties (`DERIVED`; a test checks that every property of the schema is there) - and
nothing else: no validation, no ``model_dump``. Only audit, which reads the profile and never
writes it back, gets views; everything else keeps the pydantic models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def gpu_mps_enabled(sec: Any) -> bool:
    """GpuSection.mps_enabled: an ``mps`` mapping that is not ``enabled: false``."""
    return sec.mps is not None and bool(sec.mps.enabled)


# properties of the schema's models, by class name: views compute them the same way
DERIVED: dict[str, dict[str, Callable[[Any], Any]]] = {
    "GpuSection": {"mps_enabled": gpu_mps_enabled},
}


class View:
    """Read-only stand-in for a validated pydantic model of the profile schema."""

    __slots__ = ("_cls", "_fields")

    def __init__(self, cls: str, fields: dict[str, Any]) -> None:
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_fields", fields)

    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        derived = DERIVED.get(object.__getattribute__(self, "_cls"), {}).get(name)
        if derived is not None:
            return derived(self)
        raise AttributeError(f"{self._cls} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._cls} is read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, View) and (self._cls, self._fields) == (other._cls,
                                                                          other._fields)

    __hash__ = None  # type: ignore[assignment]  # like the models: mutable containers inside

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"{self._cls}View({inner})"


def encode(value: Any) -> Any:
    """A validated model (and everything in it) as tagged JSON:
    model -> {"$m": class name, "f": {field: value}}, tuple -> {"$t": [...]},
    mapping -> {"$d": [[key, value], ...]} (keys keep their type), list -> list."""
    fields = getattr(type(value), "model_fields", None)
    if fields is not None:
        return {"$m": type(value).__name__,
                "f": {name: encode(getattr(value, name)) for name in fields}}
    if isinstance(value, tuple):
        return {"$t": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"$d": [[k, encode(v)] for k, v in value.items()]}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot encode {type(value).__name__} in a profile")


def decode(data: Any, make: Callable[[str, dict[str, Any]], Any] = View) -> Any:
    """Inverse of `encode`; ``make(class name, fields)`` builds each model (default: a View)."""
    if isinstance(data, list):
        return [decode(v, make) for v in data]
    if isinstance(data, dict):
        if "$m" in data:
            return make(data["$m"], {k: decode(v, make) for k, v in data["f"].items()})
        if "$t" in data:
            return tuple(decode(v, make) for v in data["$t"])
        if "$d" in data:
            return {_key(k): decode(v, make) for k, v in data["$d"]}
        raise ValueError(f"untagged mapping in a cached profile: {sorted(data)[:5]}")
    return data


def _key(k: Any) -> Any:
    # JSON arrays have no tuples: a tuple key (none in the schema today) would come back a list
    return tuple(k) if isinstance(k, list) else k
