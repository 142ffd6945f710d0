"""Findings about configuration that already exists on a host, whoever wrote it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import field

if TYPE_CHECKING:
    from hosttune.host import Host
    from hosttune.profile import LoadedProfile


class Severity(IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2

    def __str__(self) -> str:
        return self.name.lower()


class Finding(msgspec.Struct, frozen=True):
    check: str  # stable id, e.g. "systemd.exec-shell-syntax"
    severity: Severity
    title: str
    where: str  # "file:line" or "live: /proc/1200/limits"
    why: str
    fix: str  # what to do; names the profile key that would manage it
    also: tuple[str, ...] = ()  # the same defect in other places (a block appended twice)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "severity": str(self.severity), "title": self.title,
                "where": self.where, "also": list(self.also), "why": self.why,
                "fix": self.fix}


class DoctorContext(msgspec.Struct):
    host: Host
    loaded: LoadedProfile | None = None
    compose_files: list[str] = field(default_factory=list)  # host paths
    skipped_commands: list[tuple[str, ...]] = field(default_factory=list)
    skipped_checks: list[str] = field(default_factory=list)  # what could not be checked, why


Check = Callable[[DoctorContext], Iterable[Finding]]
