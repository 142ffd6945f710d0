"""hosttune containers plan|compose|verify"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hosttune.cli.common import (
    EXIT_FINDINGS,
    JsonOpt,
    ProfileOpt,
    RootOpt,
    console,
    emit_json,
    err_console,
    fail,
    load,
    make_host,
    run_guarded,
)

app = typer.Typer(help="Place llama.cpp containers on the CPU topology, write the compose "
                  "file, check the running containers.", no_args_is_help=True)


def _plan(profile: str | None, root: Path | None):
    from hosttune.containers.planner import plan_from_profile

    host = make_host(root)
    loaded = run_guarded(load, profile)
    return host, run_guarded(plan_from_profile, loaded.profile, host.facts)


def _print_plan(plan) -> None:
    from hosttune.host.parsers import format_cpulist
    from hosttune.profile.sizes import format_size

    console.print(f"[bold]container plan · profile {escape(plan.profile)}[/] · image "
                  f"{escape(plan.image)} · smt {plan.smt} · memlock {plan.memlock_mode}")
    for w in plan.workers:
        gpu = f" · GPU {','.join(map(str, w.gpus))}" if w.gpus else ""
        console.print(f"[bold]{escape(w.container)}[/]  cpuset {format_cpulist(w.cpus)}  mems "
                      f"{format_cpulist(w.mems)}  threads {w.threads}/{w.threads_batch}  "
                      f"mem_limit {format_size(w.memory_bytes)}{gpu}")
        for line in w.why:
            console.print(f"    · {escape(line)}")
    console.print(f"system CPUs: {format_cpulist(plan.system_cpus) or 'none'}"
                  + (f" · idle SMT siblings: {format_cpulist(plan.idle_cpus)}"
                     if plan.idle_cpus else "")
                  + (f" · excluded: {format_cpulist(plan.excluded_cpus)}"
                     if plan.excluded_cpus else "")
                  + (f" · in no cpuset: {format_cpulist(plan.unassigned_cpus)}"
                     if plan.unassigned_cpus else ""))
    for n in plan.notes:
        console.print(f"[dim]note:[/] {escape(n)}")
    for r in plan.refusals:
        console.print(f"[bold red]refused:[/] {escape(r)}")


@app.command("plan")
def plan_cmd(
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
    check: Annotated[Path | None, typer.Option(
        "--check", metavar="FILE", help="Also check the cpusets of an existing compose file "
        "(overlap, shared SMT siblings, L3/NUMA spans).")] = None,
) -> None:
    """Assign whole physical cores to each worker, aligned to L3 domains and NUMA nodes.

    Exit 1 when the plan is refused or --check finds shared CPUs or cores."""
    from hosttune.containers.cpusets import check_compose

    host, plan = _plan(profile, root)
    findings = []
    if check is not None:
        try:
            text = check.read_text(encoding="utf-8")
        except OSError as err:
            fail(f"{check}: {err.strerror}")
        findings = run_guarded(check_compose, host.facts, text, source=str(check))
    bad = not plan.ok or any(f.severity == "error" for f in findings)
    if json_out:
        data = plan.to_json()
        if check is not None:
            data["check"] = {"file": str(check), "findings": [f.to_json() for f in findings]}
        emit_json(data)
    else:
        _print_plan(plan)
        if check is not None:
            console.print(f"[bold]{escape(str(check))}[/]: "
                          f"{len(findings)} finding(s)" if findings else
                          f"[bold]{escape(str(check))}[/]: cpusets ok")
            for f in findings:
                style = "bold red" if f.severity == "error" else "yellow"
                console.print(f"[{style}]{f.kind}[/] {escape(f.message)}")
    if bad:
        raise typer.Exit(EXIT_FINDINGS)


@app.command("compose")
def compose_cmd(
    profile: ProfileOpt = None,
    root: RootOpt = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", metavar="FILE", help="Write the compose file here (default: stdout).")
    ] = None,
) -> None:
    """Write a docker-compose.yml for the plan (exit 1 if the plan is refused)."""
    import os
    import tempfile

    from hosttune.containers.compose import compose_yaml

    _host, plan = _plan(profile, root)
    if not plan.ok:
        for r in plan.refusals:
            err_console.print(f"[bold red]refused:[/] {escape(r)}")
        raise typer.Exit(EXIT_FINDINGS)
    text = run_guarded(compose_yaml, plan)
    if output is None:
        typer.echo(text, nl=False)
        return
    out = output.absolute()
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as err:
        fail(f"{output}: {err.strerror}")
    err_console.print(f"wrote {escape(str(output))} ({len(plan.workers)} service(s))")


@app.command("verify")
def verify_cmd(
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
    docker_url: Annotated[str | None, typer.Option(
        "--docker-url", help="Engine API address (default: DOCKER_HOST or the local socket).")
    ] = None,
) -> None:
    """Check the running containers against the plan through the Docker Engine API and the
    kernel: cpuset, memory limit, memlock, VmLck, mounts, read-only rootfs, capabilities, and
    the daemons' own memlock. Exit 1 with one line per mismatch."""
    from hosttune.containers.verify import docker_client, verify

    if root is not None:
        fail("containers verify reads live containers (Docker Engine API, /proc/<pid>); "
             "it does not work on a --root tree")
    host, plan = _plan(profile, root)
    if not plan.ok:
        for r in plan.refusals:
            err_console.print(f"[bold red]refused:[/] {escape(r)}")
        fail("no plan to verify against")
    client = run_guarded(docker_client, docker_url)
    try:
        report = run_guarded(verify, host, plan, client)
    finally:
        client.close()
    if json_out:
        emit_json(report.to_json())
    else:
        for c in report.checks:
            if c.ok:
                console.print(f"[green]ok[/]       {escape(c.subject)}: {escape(c.check)} "
                              f"{escape(c.actual)}"
                              + (f" [dim]({escape(c.note)})[/]" if c.note else ""))
        for c in report.mismatches:
            console.print(f"[bold red]mismatch[/] {escape(c.line())}", soft_wrap=True)
        n = len(report.mismatches)
        console.print(f"{len(report.checks) - n} ok · {n} mismatch(es)")
    if report.mismatches:
        raise typer.Exit(EXIT_FINDINGS)
