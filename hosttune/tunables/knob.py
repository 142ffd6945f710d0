"""The knob contract: one setting the engine can read and write.

A knob is rebuilt from its :class:`Change` alone (the journal keeps the change), so rollback
needs nothing but the journal. ``read(host)`` returns the setting's value as JSON: that is
what the journal records as the original. ``write(host, value)`` makes the host hold a value
of the same shape. The engine runs

- capture: ``read(host)``
- apply:   ``write(host, desired())``
- revert:  ``restore(host, original)``, which is ``write(host, original)`` unless the knob
  must undo only its own part (marked lines in a shared file, a GPU that is gone since).

Generic knobs (a file's bytes and mode or a symlink, a kernel value, a bracketed kernel
choice, a command pair) serve
every family by the change's ``kind``. A family with a setting of its own (a huge-page pool,
swapoff, an NVML value) lists its knob classes in ``Tunable.knobs``; its changes have
``kind="action"`` and name the knob in ``params["knob"]`` (:func:`action`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from hosttune.errors import ApplyError, HostError
from hosttune.host.parsers import parse_bracketed_choice
from hosttune.tunables.base import Change, as_bytes, as_text, b64, unb64

if TYPE_CHECKING:
    from hosttune.host import Host


class Knob(ABC):
    """One setting, identified by its change's id (the journal key)."""

    name: ClassVar[str]  # generic knobs: the change kind; family knobs: params["knob"]

    def __init__(self, change: Change) -> None:
        self.change = change

    @property
    def id(self) -> str:
        return self.change.id

    @property
    def params(self) -> dict[str, Any]:
        return self.change.params

    @property
    def path(self) -> str:
        assert self.change.path is not None, f"{self.change.id} has no path"
        return self.change.path

    @abstractmethod
    def read(self, host: Host) -> Any:
        """The value now, JSON-serialisable (the journal's original)."""

    @abstractmethod
    def desired(self) -> Any:
        """The value apply writes, in the shape :meth:`read` returns."""

    @abstractmethod
    def write(self, host: Host, value: Any) -> None:
        """Make the host hold ``value``."""

    def restore(self, host: Host, original: Any) -> None:
        """Put back what :meth:`read` returned before apply. Idempotent: a step that failed
        half-way, or a rollback repeated after a power cut, restores again."""
        self.write(host, original)


def action(tunable: str, knob: str, id: str, summary: str, **kw: Any) -> Change:
    """A change served by the family knob ``knob`` (``params["knob"]``)."""
    params = {"knob": knob, **kw.pop("params", {})}
    return Change(id=id, tunable=tunable, kind="action", summary=summary, params=params, **kw)


def run_checked(host: Host, argv: list[str], *, timeout_s: float = 120,
                confined: bool = False) -> None:
    """Run a command that changes the host; fail with its exit status and stderr. What it
    wrote is flushed: a step is recorded as done only once its effect survives a power cut
    (groupadd, update-grub do not fsync)."""
    res = host.run(argv, timeout_s=timeout_s, confined=confined)
    if not res.ok:
        raise ApplyError(f"{' '.join(res.argv)} failed (exit {res.returncode}): "
                         f"{res.stderr.strip()}")
    if not res.skipped:
        host.sync()


# --- generic knobs ----------------------------------------------------------------------------
class FileKnob(Knob):
    """A whole file hosttune owns (content and mode), or a symlink (kind "symlink"); removing
    it also removes the directories apply created for it."""

    name = "file"

    def read(self, host: Host) -> dict[str, Any]:
        st = host.file_state(self.path)
        return {
            "exists": st.exists,
            "content": b64(st.content) if st.content is not None else None,
            "mode": st.mode, "uid": st.uid, "gid": st.gid, "link": st.link_target,
            "created_dirs": self._missing_dirs(host),
        }

    def desired(self) -> dict[str, Any]:
        ch = self.change
        if ch.kind == "symlink":
            return {"exists": True, "link": ch.value}
        if ch.value is None:
            return {"exists": False}
        return {"exists": True, "content": b64(ch.value.encode()), "mode": ch.mode}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        path = self.path
        if not value["exists"]:
            host.remove(path)
            for d in reversed(value.get("created_dirs", [])):
                host.rmdir_if_empty(d)
            return
        host.makedirs(os.path.dirname(path))
        if value.get("link") is not None:
            host.symlink(value["link"], path)
            return
        if self.change.kind == "symlink" and host.is_symlink(path):
            # the link is this knob's own (a unit masked to /dev/null): the atomic write
            # refuses any symlink on the way, as it must for one planted by someone else
            host.remove(path)
        host.write_file(path, unb64(value["content"]), mode=value["mode"],
                        uid=value.get("uid"), gid=value.get("gid"))

    def _missing_dirs(self, host: Host) -> list[str]:
        missing: list[str] = []
        cur = os.path.dirname(self.path)
        while cur not in ("", "/") and not host.exists(cur):
            missing.append(cur)
            cur = os.path.dirname(cur)
        return list(reversed(missing))


class SymlinkKnob(FileKnob):
    name = "symlink"


class KernelKnob(Knob):
    """A runtime kernel value under /proc or /sys."""

    name = "kernel"

    def read(self, host: Host) -> dict[str, Any]:
        value = host.read_value(self.path)
        if value is not None and "[" in value:
            # a bracketed choice file reads back every choice but takes one word
            value = parse_bracketed_choice(value)[0] or value
        return {"value": value}

    def desired(self) -> dict[str, Any]:
        return {"value": self.change.value}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        if value.get("value") is not None:  # None: the file did not exist before
            host.write_kernel(self.path, value["value"])


class ChoiceKnob(KernelKnob):
    """A bracketed kernel choice ('always [madvise] never': transparent_hugepage/enabled).
    Its value is the selected word, which is what the kernel takes; a --root tree is an image
    of sysfs, so there the file gets what the kernel would then show."""

    name = "choice"

    def write(self, host: Host, value: dict[str, Any]) -> None:
        v = value.get("value")
        if v is None:
            return
        if host.offline:
            choices = parse_bracketed_choice(host.read_value(self.path) or "")[1]
            v = " ".join(f"[{c}]" if c == v else c for c in choices)
        host.write_kernel(self.path, v)


class CommandKnob(Knob):
    """A command and its inverse (``params["argv"]`` / ``params["revert_argv"]``). A command's
    effect cannot be read back: ``{}`` is the state before it ran, ``{"ran": True}`` after."""

    name = "command"

    def read(self, host: Host) -> dict[str, Any]:
        return {}

    def desired(self) -> dict[str, Any]:
        return {"ran": True}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        argv = self.params["argv"] if value.get("ran") else self.params.get("revert_argv")
        if argv:
            run_checked(host, argv, timeout_s=self.params.get("timeout_s", 120),
                        confined=self.params.get("confined", False))


GENERIC: dict[str, type[Knob]] = {k.name: k for k in (FileKnob, SymlinkKnob, KernelKnob,
                                                       ChoiceKnob, CommandKnob)}


class SharedFileKnob(Knob):
    """hosttune's marked lines in a file others edit too (/etc/fstab, /etc/environment). The
    value read is the whole file (bytes, mode, owner); apply sets only our lines. Restore puts
    the original bytes back exactly when nothing else changed the file since, and otherwise
    takes out only our lines, so an edit made after apply survives rollback."""

    @abstractmethod
    def with_ours(self, text: str) -> str:
        """``text`` with hosttune's lines as the change wants them."""

    @abstractmethod
    def without_ours(self, text: str, original: str) -> str:
        """``text`` with hosttune's lines taken out (or put back as ``original`` had them)."""

    def untouched(self, current: str, original: str) -> bool:
        """Whether the file holds nothing but what apply made of ``original``."""
        return current == self.with_ours(original)

    def read(self, host: Host) -> dict[str, Any]:
        st = host.file_state(self.path)
        if st.link_target is not None:
            raise HostError(f"{self.path} is a symlink: refusing to edit through it")
        return {"exists": st.exists, "mode": st.mode, "uid": st.uid, "gid": st.gid,
                "content": b64(st.content) if st.content is not None else None}

    def desired(self) -> dict[str, Any]:
        return {"ours": True}

    def _current(self, host: Host) -> tuple[str, dict[str, Any]]:
        now = self.read(host)
        text = as_text(unb64(now["content"])) if now["content"] is not None else ""
        return text, now

    def _write(self, host: Host, text: str, like: dict[str, Any]) -> None:
        host.write_file(self.path, as_bytes(text), mode=like["mode"] or 0o644,
                        uid=like["uid"], gid=like["gid"])

    def write(self, host: Host, value: dict[str, Any]) -> None:
        text, now = self._current(host)
        self._write(host, self.with_ours(text), now)

    def restore(self, host: Host, original: dict[str, Any]) -> None:
        text, now = self._current(host)
        orig = unb64(original["content"]) if original.get("content") is not None else b""
        if self.untouched(text, as_text(orig)):
            if original["exists"]:
                host.write_file(self.path, orig, mode=original["mode"],
                                uid=original.get("uid"), gid=original.get("gid"))
            else:
                host.remove(self.path)
            return
        self._write(host, self.without_ours(text, as_text(orig)), now)
