"""The project's own exceptions. Everything below the CLI raises these (``raise ... from err``);
the CLI maps them to exit code 2 with the message."""

from __future__ import annotations


class HosttuneError(Exception):
    """Base class: a runtime error the user should read (exit code 2)."""


class ProfileError(HosttuneError):
    """A profile is invalid. Names the file and the key path."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ""
        if file:
            where += f"{file}: "
        if key:
            where += f"{key}: "
        super().__init__(f"{where}{message}")


class UsageError(HosttuneError):
    """Bad command-line input that the option parser cannot catch (e.g. an unknown family)."""


class HostError(HosttuneError):
    """Reading or changing the host failed."""


class NeedsRootError(HosttuneError):
    """The operation needs root (or --root DIR)."""


class LockedError(HosttuneError):
    """Another hosttune run holds the lock."""


class ApplyError(HosttuneError):
    """A change could not be applied (the transaction was rolled back)."""
