"""Profiles: pydantic schema, YAML loading with precise errors, built-in profiles."""

from hosttune.profile.loader import LoadedProfile, builtin_names, load_profile
from hosttune.profile.schema import Profile

__all__ = ["LoadedProfile", "Profile", "builtin_names", "load_profile"]
