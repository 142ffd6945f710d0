"""audit / plan / apply / rollback."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from hosttune.cli import argspec
from hosttune.cli.audit_cmd import render_rows, term_options
from hosttune.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    JsonOpt,
    ProfileOpt,
    RootOpt,
    console,
    emit_json,
    fail,
    is_tty,
    load,
    make_host,
    run_guarded,
)

OnlyOpt = Annotated[list[str] | None, argspec.typer_info(argspec.ONLY)]


@argspec.typer_params(argspec.AUDIT)
def audit(**args: Any) -> None:
    """Compare the host with a profile (read-only; works without root)."""
    from hosttune.cli.audit_cmd import run_audit

    # `hosttune audit` usually does not get here: main() runs run_audit without typer, on the
    # same declaration (argspec.AUDIT)
    raise typer.Exit(run_audit(**args))


def plan(
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
    only: OnlyOpt = None,
    runtime_only: Annotated[bool, typer.Option("--runtime-only",
                                               help="Only live values, no files.")] = False,
) -> None:
    """Show every change apply would make: runtime values and file diffs."""
    from hosttune import engine

    host = make_host(root)
    loaded = run_guarded(load, profile)
    p = run_guarded(engine.plan, host, loaded, runtime_only=runtime_only,
                    only=set(only) if only else None)
    if json_out:
        emit_json(p.to_json())
        raise typer.Exit(EXIT_FINDINGS if p.changes else EXIT_OK)
    _print_plan(p)
    raise typer.Exit(EXIT_FINDINGS if p.changes else EXIT_OK)


def _print_plan(p) -> None:
    """Changes grouped by family, in apply order; each file change's diff right under it."""
    for w in p.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(w)}", soft_wrap=True)
    if not p.changes:
        console.print("[green]Nothing to change[/]: the host matches the profile.")
        return
    console.print(f"[bold]hosttune plan · {len(p.changes)} change(s)[/]")
    family = None
    for i, c in enumerate(p.changes, 1):
        if c.tunable != family:
            family = c.tunable
            console.print(f"[bold]{escape(family)}[/]")
        kind = "[cyan]runtime   [/]" if c.runtime else "[yellow]persistent[/]"
        needs = f"  [dim](needs {escape(', '.join(c.needs))})[/]" if c.needs else ""
        console.print(f"{i:>4}  {kind}  {escape(c.summary)}{needs}", soft_wrap=True)
        for line in c.diff.splitlines():
            # whole lines, never cropped: a diff is what apply will write
            style = ("bold" if line.startswith(("+++", "---")) else "green"
                     if line.startswith("+") else "red" if line.startswith("-") else "cyan"
                     if line.startswith("@@") else "")
            text = escape(line)
            console.print(" " * 18 + (f"[{style}]{text}[/]" if style else text),
                          soft_wrap=True, highlight=False)
    if p.needs:
        console.print("[cyan]after apply:[/] " + escape(", ".join(p.needs)))


def apply(
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    only: OnlyOpt = None,
    runtime_only: Annotated[bool, typer.Option(
        "--runtime-only", help="Re-apply live values only (what the boot unit runs).")] = False,
) -> None:
    """Apply the profile transactionally (root, or --root DIR)."""
    from hosttune import engine

    host = make_host(root)
    loaded = run_guarded(load, profile)
    only_set = set(only) if only else None
    if not host.can_write:
        fail("apply changes the host: run it as root (or use --root DIR for a tree you can "
             "write)")
    if not yes:
        p = run_guarded(engine.plan, host, loaded, runtime_only=runtime_only, only=only_set)
        if not p.changes:
            if json_out:
                emit_json({"ok": True, "changed": False, "steps": []})
            else:
                console.print("[green]Nothing to change[/]: the host matches the profile.")
            raise typer.Exit(EXIT_OK)
        if not is_tty():
            fail("apply needs --yes when not run interactively")
        _print_plan(p)
        if not typer.confirm(f"Apply {len(p.changes)} change(s)?"):
            # the user's answer, not an error: nothing changed, the plan above still stands
            console.print("Not applied: nothing was changed.")
            raise typer.Exit(EXIT_OK)
    from rich.progress import Progress

    if json_out or not is_tty():
        report = run_guarded(engine.apply, host, loaded, runtime_only=runtime_only, only=only_set)
    else:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("applying", total=None)

            def prog(i, n, ch):
                bar.update(task, total=n, completed=i, description=escape(ch.summary[:60]))

            report = run_guarded(engine.apply, host, loaded, runtime_only=runtime_only,
                                 only=only_set, progress=prog)
    if json_out:
        emit_json(report.to_json())
    else:
        _print_apply(report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FINDINGS)


def _print_apply(report) -> None:
    if report.recovered:
        console.print(f"[yellow]recovered an interrupted run:[/] undid "
                      f"{len(report.recovered)} step(s)")
    if not report.steps:
        console.print("[green]Nothing to change[/]: the host matches the profile.")
        return
    for s in report.steps:
        style = {"applied": "green", "failed": "bold red", "reverted": "yellow"}.get(s.status, "")
        line = f"[{style}]{s.status:>9}[/] {escape(s.change.summary)}"
        if s.error:
            line += f" [red]({escape(s.error)})[/]"
        console.print(line)
        for argv in s.skipped_commands:
            console.print(f"          [dim]skipped (--root): {escape(' '.join(argv))}[/]")
    if not report.ok and report.error:
        console.print(f"[bold red]apply failed:[/] {escape(report.error)}")
        if report.changed:
            # verification failed after every step was written: the engine keeps them
            console.print("[yellow]the changes above stay applied[/]; `hosttune rollback` "
                          "restores the originals")
        else:
            console.print("[yellow]every change of this run was reverted[/]: the host is as "
                          "before")
    bad = [r for r in report.verify if r.status.is_drift]
    if bad:
        console.file.flush()
        sys.stdout.write(render_rows(bad, title="verify: still drifting", **term_options()))
    if report.needs:
        console.print("[cyan]still needed:[/] " + escape(", ".join(report.needs)))


def _shown(host, path: str) -> str:
    """A host path as the user finds it: under --root DIR, the file inside DIR."""
    return str(host.path(path)) if host.offline else path


def rollback(
    root: RootOpt = None,
    json_out: JsonOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only report what the journal would restore (exit 1 if anything).")
    ] = False,
) -> None:
    """Restore the exact original values and files recorded in the journal."""
    from hosttune import engine

    host = make_host(root)
    if dry_run:  # read-only: what check mode of the Ansible module needs
        st = run_guarded(engine.journal_status, host)
        pending = bool(st["entries"] or st["interrupted"])
        if json_out:
            emit_json({"ok": True, "dry_run": True, **st})
        elif not st["exists"]:
            # no journal yet: name the directory where it would be, not a file that is not there
            where = escape(_shown(host, host.state_dir))
            console.print(f"Nothing to roll back: no journal in {where} (nothing has been "
                          "applied here).")
        else:
            console.print(f"{st['entries']} recorded original(s) in "
                          f"{escape(_shown(host, st['path']))}"
                          + (" · an interrupted run to undo" if st["interrupted"] else ""))
        raise typer.Exit(EXIT_FINDINGS if pending else EXIT_OK)
    if not host.can_write:
        fail("rollback changes the host: run it as root (or use --root DIR)")
    st = run_guarded(engine.journal_status, host)
    if not st["entries"] and not st["interrupted"]:
        if json_out:
            emit_json({"ok": True, "steps": [], "recovered": []})
        else:
            console.print("Nothing to roll back: the journal is empty.")
        raise typer.Exit(EXIT_OK)
    if not yes and is_tty() and not json_out:
        console.print(f"{st['entries']} recorded original(s) in "
                      f"{escape(_shown(host, st['path']))}")
        if not typer.confirm("Restore them?"):
            console.print("Not restored: nothing was changed.")
            raise typer.Exit(EXIT_OK)
    report = run_guarded(engine.rollback, host)
    if json_out:
        emit_json(report.to_json())
    else:
        if report.recovered:
            console.print(f"[yellow]undid an interrupted run:[/] {len(report.recovered)} step(s)")
        for s in report.steps:
            style = "green" if s.status == "reverted" else "bold red"
            console.print(f"[{style}]{s.status:>13}[/] {escape(s.change.summary)}"
                          + (f" [red]({escape(s.error)})[/]" if s.error else ""))
        for argv in report.skipped_commands:
            console.print(f"[dim]skipped (--root): {escape(' '.join(argv))}[/]")
        for line in report.still_running:
            console.print(f"[yellow]until restarted:[/] {escape(line)}", soft_wrap=True)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FINDINGS)
