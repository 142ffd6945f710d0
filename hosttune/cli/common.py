"""Shared CLI plumbing: options, output, exit codes. Only hosttune/cli prints or exits."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from hosttune.cli import argspec

# the typer-free audit path owns these; every other command shares them
from hosttune.cli.audit_cmd import (
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    emit_json,
    print_error,
)
from hosttune.errors import HosttuneError

__all__ = ["EXIT_ERROR", "EXIT_FINDINGS", "EXIT_OK", "emit_json"]

# emoji=False: rich's emoji codes would turn data into pictures (a PCI address 0000:ab:00.0
# prints as 0000🆎00.0). Markup stays for hosttune's own styles; data is escape()d or Text.
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)

# the declarations in argspec, which the fast paths (audit, models load|list|verify) parse too
RootOpt = Annotated[Path | None, argspec.typer_info(argspec.ROOT)]
JsonOpt = Annotated[bool, argspec.typer_info(argspec.JSON)]
ProfileOpt = Annotated[str | None, argspec.typer_info(argspec.PROFILE)]


def make_host(root: Path | None):  # -> Host
    from hosttune.host import Host

    if root is not None:
        if not root.is_dir():
            fail(f"--root {root}: not a directory")
        return Host(root)
    return Host("/")


def load(profile: str | None):  # -> LoadedProfile
    from hosttune.profile import load_profile

    return load_profile(profile or "inference")


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def run_guarded(fn, *args, **kwargs):
    """Call library code; turn the project's exceptions into exit code 2 with the message."""
    try:
        return fn(*args, **kwargs)
    except HosttuneError as err:
        fail(str(err))


def is_tty() -> bool:
    return sys.stdin.isatty() and os.environ.get("CI") is None
