"""A loaded profile and where its keys came from (no schema import here: see cache.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import field

from hosttune.errors import ProfileError

if TYPE_CHECKING:
    from hosttune.profile.schema import Profile


class LoadedProfile(msgspec.Struct, frozen=True):
    profile: Profile  # validated, or decoded from the cache: the same frozen Structs either way
    files: tuple[str, ...]  # child first
    origin: dict[str, str] = field(default_factory=dict)  # "a.b.c" -> file that set it
    raw: dict[str, Any] = field(default_factory=dict)  # merged YAML (for `profiles show`)

    def where(self, key: str) -> str:
        """The file that set ``key`` (or its nearest parent key)."""
        k = key
        while k:
            if k in self.origin:
                return self.origin[k]
            k = k.rpartition(".")[0]
        return self.files[0]

    def error(self, key: str, message: str) -> ProfileError:
        return ProfileError(message, file=self.where(key), key=key)
