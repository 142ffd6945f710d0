"""The typer app: the only place that prints or exits.

Each command group lives in its own module and is registered here. typer itself is imported
only when the app is built: the plain forms of `hosttune audit` run without it (audit_cmd)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from hosttune import __version__

if TYPE_CHECKING:
    import typer

# (command name, module, attribute, kind). Registration order is the order of --help.
# A command's module is imported only when it is registered: `hosttune audit` registers audit
# alone (see main), so it does not pay for rich.progress, the bench statistics, the exporter...
_COMMANDS: tuple[tuple[str, str, str, str], ...] = (
    ("audit", "core_cmds", "audit", "command"),
    ("plan", "core_cmds", "plan", "command"),
    ("apply", "core_cmds", "apply", "command"),
    ("rollback", "core_cmds", "rollback", "command"),
    ("doctor", "doctor", "doctor", "command"),
    ("profiles", "profiles", "app", "group"),
    ("topology", "topology", "topology", "command"),
    ("containers", "containers", "app", "group"),
    ("status", "monitor", "status_app", "group"),
    ("watch", "monitor", "watch", "command"),
    ("exporter", "monitor", "exporter", "command"),
    ("models", "models", "app", "group"),
    ("shim", "models", "shim_app", "group"),
    ("export", "export", "app", "group"),  # fleet: hosttune export tuned
    ("bench", "bench", "app", "group"),
)


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or with the one named ``only`` (faster start)."""
    import typer

    def _version(value: bool) -> None:
        if value:
            typer.echo(f"hosttune {__version__}")
            raise typer.Exit(0)

    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="Show the version and exit."),
    ) -> None:
        """hosttune: audit -> plan -> apply -> verify -> rollback."""

    new = typer.Typer(
        name="hosttune",
        help="Make Linux hosts fast and predictable for AI inference - and prove it.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    new.callback()(_root)
    for name, mod, attr, kind in _COMMANDS:
        if only is not None and name != only:
            continue
        obj = getattr(importlib.import_module(f"hosttune.cli.{mod}"), attr)
        if kind == "command":
            new.command(name)(obj)
        else:
            new.add_typer(obj, name=name)
    return new


def __getattr__(name: str) -> Any:
    if name == "app":  # the full CLI (tests, documentation tools)
        full = build_app()
        globals()["app"] = full
        return full
    raise AttributeError(name)


def _command_name(argv: list[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a if any(a == c[0] for c in _COMMANDS) else None
        if a in ("--version", "-h", "--help"):
            return None
    return None


def main() -> None:
    # --debug (anywhere on the line) or HOSTTUNE_DEBUG=1: let an unexpected exception show
    # its traceback; otherwise it is one line and exit 2, like every other runtime error
    debug = "--debug" in sys.argv[1:] or bool(os.environ.get("HOSTTUNE_DEBUG"))
    sys.argv[1:] = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        _main(sys.argv[1:])
    except (SystemExit, KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as err:
        if debug:
            raise
        from hosttune.cli.audit_cmd import EXIT_ERROR, print_error
        from hosttune.errors import HosttuneError

        if isinstance(err, HosttuneError):  # a library error no command caught: its message
            print_error(str(err))
            sys.exit(EXIT_ERROR)
        print_error(f"internal error: {type(err).__name__}: {err} (rerun with --debug for "
                    "the traceback)")
        sys.exit(EXIT_ERROR)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["audit"]:
        from hosttune.cli.audit_cmd import parse_args, run_audit

        args = parse_args(argv[1:], os.environ)
        if args is not None:
            sys.exit(run_audit(**args))
    if argv[:1] == ["models"] and argv[1:2] in (["load"], ["list"], ["verify"]):
        from hosttune.cli.models_fast import main_models

        code = main_models(argv[1:])
        if code is not None:
            # Everything is written and closed: skip the interpreter's teardown (module
            # finalisation, ~10-20 ms here), a share of a load's whole-process time.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    build_app(_command_name(argv))()
