"""Profiles: the schema (msgspec Structs), YAML loading with precise errors, built-in profiles.

Names are resolved on first use (PEP 562), so importing a submodule such as
``hosttune.profile.sizes`` imports neither the schema nor the loader."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hosttune.profile.loaded import LoadedProfile
    from hosttune.profile.loader import builtin_names, load_profile
    from hosttune.profile.schema import Profile

__all__ = ["LoadedProfile", "Profile", "builtin_names", "load_profile"]

_WHERE = {"LoadedProfile": "loaded", "Profile": "schema", "builtin_names": "loader",
          "load_profile": "loader"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"hosttune.profile.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hosttune.profile' has no attribute {name!r}")
