"""hosttune export tuned: a tuned profile for the settings tuned can express."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hosttune.cli.common import (
    EXIT_OK,
    JsonOpt,
    ProfileOpt,
    console,
    emit_json,
    fail,
    load,
    run_guarded,
)

app = typer.Typer(help="Export a profile for other tuning engines.", no_args_is_help=True)


@app.command("tuned")
def tuned(
    profile: ProfileOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write tuned.conf here (default: stdout).", metavar="FILE")] = None,
    root: Annotated[Path | None, typer.Option(
        "--root", metavar="DIR",
        help="Resolve host-dependent sizes (RAM percentages, per-NUMA-node pools) from this "
        "tree; '--root /' uses this machine. Without it they are listed as not expressed.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a tuned profile (tuned.conf) for the settings tuned can express; a comment at the
    top lists what it cannot (memlock, swap, hugetlbfs mounts, NVML settings ...)."""
    from hosttune.fleet import export_tuned

    loaded = run_guarded(load, profile)
    host = None
    if root is not None:
        from hosttune.host import Host

        if not root.is_dir():
            fail(f"--root {root}: not a directory")
        host = Host(root)
    exp = run_guarded(export_tuned, loaded, host)
    text = exp.render()
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
        except OSError as err:
            fail(f"cannot write {output}: {err.strerror}")
    if json_out:
        data = exp.to_json()
        if output is not None:
            data["output"] = str(output)
        emit_json(data)
    elif output is None:
        typer.echo(text, nl=False)
    else:
        console.print(f"wrote {escape(str(output))} (tuned profile '{escape(exp.name)}'; "
                      f"{len(exp.unexpressed)} setting(s) not expressible, listed at the top)")
    raise typer.Exit(EXIT_OK)
