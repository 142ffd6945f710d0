"""hosttune doctor"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hosttune.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    JsonOpt,
    RootOpt,
    console,
    emit_json,
    make_host,
    run_guarded,
)

SEV_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def doctor(
    root: RootOpt = None,
    json_out: JsonOpt = False,
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="Also compare with what this profile means to hold "
        "(e.g. model sizes per mount).")] = None,
    compose: Annotated[list[Path] | None, typer.Option(
        "--compose", help="docker-compose files to check (host paths; repeatable).")] = None,
) -> None:
    """Diagnose hand-made configuration: harmful, ineffective or contradictory settings."""
    from hosttune import doctor as doc
    from hosttune.cli.common import load

    host = make_host(root)
    loaded = run_guarded(load, profile) if profile else None
    rep = run_guarded(doc.run, host, loaded, [str(c) for c in compose or []])
    if json_out:
        emit_json(rep.to_json())
    else:
        if not rep.findings:
            console.print("[green]No findings.[/]")
        else:
            t = Table(header_style="bold", show_lines=True, title="hosttune doctor")
            t.add_column("severity")
            t.add_column("finding", overflow="fold", ratio=2)
            t.add_column("where", overflow="fold", ratio=1)
            t.add_column("why · fix", overflow="fold", ratio=3)
            for f in rep.findings:
                sev = str(f.severity)
                t.add_row(f"[{SEV_STYLE[sev]}]{sev}[/]", escape(f.title),
                          escape("\n".join([f.where, *(f"and {a}" for a in f.also)])),
                          escape(f.why) + "\n[cyan]fix:[/] " + escape(f.fix))
            console.print(t)
        for argv in rep.skipped_commands:
            console.print(f"[dim]skipped (--root): {escape(' '.join(argv))}[/]")
        for s in rep.skipped_checks:
            console.print(f"[dim]skipped: {escape(s)}[/]")
        for e in rep.errors:
            console.print(f"[yellow]not checked:[/] {escape(e)}")
    worst = rep.worst
    raise typer.Exit(EXIT_FINDINGS if worst is not None and worst >= 1 else EXIT_OK)
