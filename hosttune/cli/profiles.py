"""hosttune profiles list|show"""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from hosttune.cli.audit_cmd import write_stdout
from hosttune.cli.common import JsonOpt, console, emit_json, run_guarded

app = typer.Typer(help="Built-in and custom profiles.", no_args_is_help=True)


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List the built-in profiles."""
    from hosttune.profile import builtin_names, load_profile

    items = []
    for name in builtin_names():
        lp = run_guarded(load_profile, name)
        items.append({"name": name, "description": lp.profile.description,
                      "extends": lp.profile.extends})
    if json_out:
        emit_json(items)
        return
    t = Table(header_style="bold")
    t.add_column("profile")
    t.add_column("extends")
    t.add_column("description", overflow="fold")
    for it in items:
        t.add_row(escape(it["name"]), escape(it["extends"] or ""), escape(it["description"]))
    console.print(t)


@app.command("show")
def show(
    profile: str = typer.Argument("inference", help="Built-in name or YAML path."),
    json_out: JsonOpt = False,
) -> None:
    """Show a profile with every knob explicit (inheritance resolved, defaults filled in)."""
    import msgspec
    import yaml

    from hosttune.profile import load_profile

    lp = run_guarded(load_profile, profile)
    data = msgspec.to_builtins(lp.profile, str_keys=True)  # as JSON has it: "0" for node 0
    if json_out:
        emit_json({"profile": data, "files": list(lp.files)})
        return
    # meant to be saved (`profiles show P > mine.yaml` starts a custom profile): plain bytes,
    # never wrapped to a terminal width, no markup or emoji codes applied to the data
    write_stdout(f"# {profile} (from {' <- '.join(lp.files)})\n"
                 + yaml.safe_dump(data, sort_keys=False, default_flow_style=False,
                                  width=float("inf")))
