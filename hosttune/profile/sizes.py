"""Sizes in profiles: '90GiB', '512MiB', '2M' (huge-page sizes), '50%' (of RAM), or plain ints."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
# Note: like the kernel and hugetlbfs mount options, "GB" here means GiB. Profiles should say
# GiB; the loader accepts both because operators write both.

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """'90GiB' -> bytes. Raises ValueError with the expected format."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '90GiB', got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size like '90GiB' or '512MiB', got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_percent(value: str) -> float | None:
    """'50%' -> 0.5; None if not a percentage."""
    s = str(value).strip()
    if not s.endswith("%"):
        return None
    try:
        p = float(s[:-1])
    except ValueError as err:
        raise ValueError(f"expected a percentage like '50%', got {value!r}") from err
    if not 0 <= p <= 100:
        raise ValueError(f"a percentage must be within 0-100%, got {value!r}")
    return p / 100.0


def format_size(n: int) -> str:
    """Bytes -> '90 GiB' (exact units where possible)."""
    for unit, div in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= div:
            q = n / div
            return f"{q:.0f} {unit}" if n % div == 0 else f"{q:.1f} {unit}"
    return f"{n} B"


def hugepage_size_label(n: int) -> str:
    """2097152 -> '2M', 1073741824 -> '1G' (hugetlbfs pagesize= style)."""
    if n % 1024**3 == 0:
        return f"{n // 1024**3}G"
    if n % 1024**2 == 0:
        return f"{n // 1024**2}M"
    return f"{n // 1024}K"


_WATTS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*W\s*$", re.IGNORECASE)


def parse_watts(v: str | int) -> float:
    """450 / '450W' / '450 W' -> 450.0 (watts)."""
    if isinstance(v, bool):
        raise ValueError("expected watts, got a boolean")
    if isinstance(v, int):
        return float(v)
    m = _WATTS_RE.match(v)
    if not m:
        raise ValueError(f"expected 'max', 'default' or watts ('450W'), got {v!r}")
    return float(m.group(1))


_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def check_model_name(v: str) -> str:
    """A model's file name in the store (the schema's models.declared[].name and `models load
    --name`)."""
    if not _MODEL_NAME_RE.match(v):
        raise ValueError(f"model name {v!r}: use letters, digits and ._+- (not starting with "
                         "a dot or a dash, at most 200 characters)")
    return v
