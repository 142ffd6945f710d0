"""Command runner: argv lists only, timeouts, and 'recorded, not run' in offline mode."""

from __future__ import annotations

import subprocess

import msgspec

from hosttune.errors import HostError

DEFAULT_TIMEOUT_S = 60.0


class CommandResult(msgspec.Struct, frozen=True):
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    skipped: bool = False  # True when offline: the command was recorded, not run

    @property
    def ok(self) -> bool:
        return self.skipped or self.returncode == 0


class Runner:
    """Runs external commands. With ``offline=True`` (``--root DIR``) nothing is ever executed:
    each call is recorded in ``skipped`` and answered with a skipped result - except a
    ``confined`` command, one that names the tree itself and touches nothing outside it
    (``systemd-sysusers --root=DIR``, ``groupdel --prefix DIR``). A service, not a record:
    tests subclass it."""

    def __init__(self, offline: bool = False) -> None:
        self.offline = offline
        self.skipped: list[tuple[str, ...]] = []
        self.ran: list[tuple[str, ...]] = []

    def run(
        self,
        argv: list[str] | tuple[str, ...],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        input_text: str | None = None,
        check: bool = False,
        confined: bool = False,
    ) -> CommandResult:
        args = tuple(str(a) for a in argv)
        if not args:
            raise HostError("empty command")
        if self.offline and not confined:
            self.skipped.append(args)
            return CommandResult(args, 0, skipped=True)
        self.ran.append(args)
        try:
            proc = subprocess.run(  # argv list, never a shell
                list(args),
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except FileNotFoundError as err:
            raise HostError(f"command not found: {args[0]}") from err
        except subprocess.TimeoutExpired as err:
            raise HostError(f"{' '.join(args)} timed out after {timeout_s:g} s") from err
        result = CommandResult(args, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise HostError(
                f"{' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
            )
        return result
