"""The Tunable contract.

A tunable family reads the host and the profile and returns an :class:`Evaluation`: one
:class:`Row` per setting (current, desired, status) and the :class:`Change` list that would
bring the host to the profile. Evaluation never writes. The engine applies changes, journals
originals and reverts them through knobs (:mod:`hosttune.tunables.knob`): the generic kinds
(file, symlink, kernel value, command) serve every family, ``action`` changes name one of the
family's own knobs (``Tunable.knobs``).
"""

from __future__ import annotations

import base64
import difflib
from abc import ABC, abstractmethod
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec
from msgspec import field

if TYPE_CHECKING:
    from hosttune.errors import ProfileError
    from hosttune.host import Host, HostFacts
    from hosttune.profile import LoadedProfile, Profile
    from hosttune.tunables.knob import Knob


class Status(StrEnum):
    OK = "ok"
    DRIFT = "drift"
    CONFLICT = "conflict"  # persisted value is overridden elsewhere: will not hold at boot
    UNSUPPORTED = "unsupported"  # this host/device cannot do it
    NEEDS_ROOT = "needs root"  # could not be read without root
    NEEDS_REBOOT = "needs reboot"  # configured, active after a reboot
    NEEDS_RESTART = "needs restart"  # configured, active after a daemon restart
    OFFLINE = "offline"  # runtime state of a --root tree that only a command could change
    ERROR = "error"  # reading failed

    @property
    def is_drift(self) -> bool:
        return self in (Status.DRIFT, Status.CONFLICT, Status.ERROR)


class Row(msgspec.Struct, frozen=True):
    tunable: str
    key: str
    current: str
    desired: str
    status: Status
    note: str = ""
    needs: tuple[str, ...] = ()  # e.g. ("reboot",), ("restart docker.service",)

    def to_json(self) -> dict[str, Any]:
        return {
            "tunable": self.tunable, "key": self.key, "current": self.current,
            "desired": self.desired, "status": str(self.status), "note": self.note,
            "needs": list(self.needs),
        }


ChangeKind = Literal["file", "symlink", "kernel", "choice", "command", "action"]


class Change(msgspec.Struct, frozen=True):
    """One step of a plan. ``id`` is the journal key: tunable/key[/device]."""

    id: str
    tunable: str
    kind: ChangeKind
    summary: str
    path: str | None = None
    value: str | None = None  # file content / kernel value / link target; None = remove file
    mode: int = 0o644
    runtime: bool = False  # True: live state; False: persistent configuration
    needs: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    diff: str = ""  # unified diff for file changes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "tunable": self.tunable, "kind": self.kind, "summary": self.summary,
            "path": self.path, "value": self.value, "mode": self.mode, "runtime": self.runtime,
            "needs": list(self.needs), "params": self.params, "diff": self.diff,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        return cls(
            id=d["id"], tunable=d["tunable"], kind=d["kind"], summary=d["summary"],
            path=d.get("path"), value=d.get("value"), mode=d.get("mode", 0o644),
            runtime=d.get("runtime", False), needs=tuple(d.get("needs", ())),
            params=d.get("params", {}), diff=d.get("diff", ""),
        )


class Evaluation(msgspec.Struct, frozen=True):
    rows: list[Row] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def add(self, row: Row, change: Change | None = None) -> None:
        """One setting's row, and its change when there is one (what :func:`setting` gives)."""
        self.rows.append(row)
        if change is not None:
            self.changes.append(change)


def setting(tunable: str, key: str, current: str, desired: str, change: Change | None, *,
            ok: bool | None = None, note: str = "", drift_note: str | None = None,
            overridden: bool = False) -> tuple[Row, Change | None]:
    """One setting as a row and, when it drifts, the change (its knob) that sets it.

    ``ok`` defaults to ``current == desired`` (pass it when the two are shown differently
    from how they compare). A setting that holds now but that a later file overrides at boot
    (``overridden``) is a conflict, with nothing to change now. ``drift_note`` replaces
    ``note`` on a drifting row (e.g. the GPU's limits, worth saying only when it changes)."""
    same = current == desired if ok is None else ok
    if same:
        return Row(tunable, key, current, desired,
                   Status.CONFLICT if overridden else Status.OK, note), None
    return Row(tunable, key, current, desired, Status.DRIFT,
               note if drift_note is None else drift_note), change


class Context(msgspec.Struct):
    host: Host
    loaded: LoadedProfile
    runtime_only: bool = False  # boot-time re-apply: no persistent files
    audit_only: bool = False  # a read-only audit: nothing will be written (no refusals)

    @property
    def profile(self) -> Profile:
        return self.loaded.profile

    @property
    def facts(self) -> HostFacts:
        return self.host.facts

    def error(self, key: str, message: str) -> ProfileError:
        return self.loaded.error(key, message)


class Tunable(ABC):
    """One setting family. Subclasses set ``name`` and ``section`` and implement
    :meth:`evaluate`; families with ``action`` changes list the knobs that serve them."""

    name: ClassVar[str]
    section: ClassVar[str]  # attribute of Profile that configures this family
    knobs: ClassVar[tuple[type[Knob], ...]] = ()  # served by params["knob"] of action changes

    def enabled(self, ctx: Context) -> bool:
        return getattr(ctx.profile, self.section, None) is not None

    def validate(self, ctx: Context) -> None:  # noqa: B027 - optional hook
        """Check the profile against the host before anything is written; raise
        ProfileError naming the key."""

    def still_running(self, host: Host, reverted: list[Change]) -> list[str]:
        """After rollback restored ``reverted``: running processes that keep the tuned value
        until they restart (one line each)."""
        return []

    @abstractmethod
    def evaluate(self, ctx: Context) -> Evaluation:
        """Read the host, compare with the profile. Never writes."""


# --- helpers for file-managed settings -----------------------------------------------------------

HEADER = "# Managed by hosttune - changes here are overwritten by `hosttune apply`.\n"


def unified_diff(path: str, old: str | None, new: str | None) -> str:
    a = (old or "").splitlines(keepends=True)
    b = (new or "").splitlines(keepends=True)
    return "".join(difflib.unified_diff(
        a, b, fromfile=path if old is not None else "/dev/null",
        tofile=path if new is not None else "/dev/null",
    ))


def file_change(
    ctx: Context,
    tunable: str,
    path: str,
    content: str | None,
    *,
    mode: int = 0o644,
    needs: tuple[str, ...] = (),
    key: str | None = None,
) -> tuple[Row, Change | None]:
    """Row + change (or None) that makes ``path`` hold ``content`` (None: absent)."""
    host = ctx.host
    key = key or f"file {path}"
    try:
        state = host.file_state(path)
    except PermissionError:
        return Row(tunable, key, "?", "present", Status.NEEDS_ROOT), None
    current: str | None = None
    if state.exists and state.link_target is not None:
        current_desc = f"symlink -> {state.link_target}"
    elif state.exists:
        assert state.content is not None
        current = state.content.decode("utf-8", errors="replace")
        current_desc = "present"
    else:
        current_desc = "absent"
    desired_desc = "absent" if content is None else "present"
    same_content = (
        state.link_target is None
        and ((content is None and not state.exists) or (current is not None and current == content))
    )
    same_mode = content is None or not state.exists or state.mode == mode
    if same_content and same_mode:
        return Row(tunable, key, current_desc, desired_desc, Status.OK), None
    if same_content:
        note = f"mode {state.mode:o} -> {mode:o}" if state.mode is not None else ""
        summary = f"chmod {mode:o} {path}"
        status_cur = f"mode {state.mode:o}" if state.mode is not None else current_desc
        row = Row(tunable, key, status_cur, f"mode {mode:o}", Status.DRIFT, note)
    else:
        if content is None:
            summary = f"remove {path}"
        elif not state.exists:
            summary = f"create {path}"
        else:
            summary = f"update {path}"
        row = Row(tunable, key, current_desc if content is None or not state.exists
                  else "differs", desired_desc, Status.DRIFT)
    if ctx.runtime_only:
        return row, None
    ch = Change(
        id=f"{tunable}/{path}", tunable=tunable, kind="file", summary=summary, path=path,
        value=content, mode=mode, runtime=False, needs=needs,
        diff=unified_diff(path, current, content),
    )
    return row, ch


def as_text(data: bytes) -> str:
    """Bytes of a shared file (/etc/fstab, /etc/environment) as text that encodes back to the
    same bytes (:func:`as_bytes`): a Latin-1 comment or any non-UTF-8 byte survives the edit."""
    return data.decode("utf-8", errors="surrogateescape")


def as_bytes(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))
