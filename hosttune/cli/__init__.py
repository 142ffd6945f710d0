"""The typer app: the only place that prints or exits.

Each command group lives in its own module and is registered here."""

from __future__ import annotations

import os

# pydantic scans installed entry points for plugins (logfire & co.) on first use: ~20 ms of
# audit's 0.3 s budget, for nothing hosttune uses.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")

import typer

from hosttune import __version__
from hosttune.cli import (
    bench,
    containers,
    core_cmds,
    doctor,
    models,
    monitor,
    profiles,
    status,
    topology,
)
from hosttune.cli import export as export_cmds  # fleet: hosttune export tuned

app = typer.Typer(
    name="hosttune",
    help="Make Linux hosts fast and predictable for AI inference - and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command()(core_cmds.audit)
app.command()(core_cmds.plan)
app.command()(core_cmds.apply)
app.command()(core_cmds.rollback)
app.command()(doctor.doctor)
app.add_typer(profiles.app, name="profiles")
app.command()(topology.topology)
app.add_typer(containers.app, name="containers")
app.add_typer(monitor.status_app, name="status")
monitor.status_app.command("gpu")(status.gpu)
app.command()(monitor.watch)
app.command()(monitor.exporter)
app.add_typer(models.app, name="models")
app.add_typer(models.shim_app, name="shim")
app.add_typer(export_cmds.app, name="export")
app.add_typer(bench.app, name="bench")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hosttune {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """hosttune: audit -> plan -> apply -> verify -> rollback."""


def main() -> None:
    app()
