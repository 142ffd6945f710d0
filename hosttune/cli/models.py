"""hosttune models load|list|verify|unload|pool  and  hosttune shim build"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from hosttune.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    JsonOpt,
    ProfileOpt,
    RootOpt,
    console,
    emit_json,
    err_console,
    fail,
    make_host,
    run_guarded,
)

app = typer.Typer(help="Huge-page model store: load models into hugetlbfs once, map them "
                  "everywhere.", no_args_is_help=True)
shim_app = typer.Typer(help="The LD_PRELOAD shim that shows loaders a stored model's true "
                       "size.", no_args_is_help=True)

MountOpt = Annotated[str | None, typer.Option(
    "--mount", "-m", help="hugetlbfs mount of the store (default: the profile's models.mount, "
    "else the only hugetlbfs mount).")]


def _profile(profile: str | None):
    """The profile when one is given or the default loads; models commands also work
    without one (mounts come from the live mount table)."""
    from hosttune.cli.common import load

    return run_guarded(load, profile).profile


def _fmt(n: int) -> str:
    from hosttune.profile.sizes import format_size

    return format_size(n)


def _nodes(m) -> str:
    if m.pages_per_node is None:
        return "?"
    return " ".join(f"N{k}={v}" for k, v in sorted(m.pages_per_node.items())) or "-"


@app.command("load")
def load_cmd(
    file: Annotated[str, typer.Argument(help="Model file to load (GGUF, safetensors, ...).")],
    name: Annotated[str | None, typer.Option("--name", "-n",
                                             help="Name in the store (default: file name).")]
    = None,
    mount: MountOpt = None,
    node: Annotated[int | None, typer.Option("--node", help="Put the pages on this NUMA "
                                             "node (memory policy, checked).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a stored model of the "
                                          "same name (atomically, after the copy).")] = False,
    checksum: Annotated[bool, typer.Option("--checksum/--no-checksum", help="Record an "
                                           "xxh3 checksum for `models verify`.")] = True,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=64,
                                                help="Copy threads (default: up to 4).")] = None,
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy a model into a hugetlbfs store (parallel reads, no partial file on failure)."""
    from hosttune.models import store

    host = make_host(root)
    if host.offline:
        fail("models load fills the live huge-page pool; it does not work with --root")
    prof = _profile(profile)
    # A model the profile declares brings its mount and node (the options still win).
    target = name or file.rstrip("/").rsplit("/", 1)[-1]
    decl = next((d for d in (prof.models.declared if prof.models else []) if d.name == target),
                None)
    if decl is not None:
        mount = mount or decl.mount
        node = node if node is not None else decl.node
    m = run_guarded(store.resolve_mount, host, prof, mount)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=json_out, transient=False) as bar:
        task = bar.add_task(escape(name or file.rsplit("/", 1)[-1]), total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            res = run_guarded(store.load_model, host, file, m, name=name, node=node,
                              replace=replace, checksum=checksum, threads=threads,
                              progress=progress)
        except KeyboardInterrupt:
            fail("interrupted: nothing was stored")
    md = res.model
    if json_out:
        emit_json({"model": md.to_json(), "seconds": res.seconds, "threads": res.threads,
                   "rate_bytes_per_s": res.rate_bytes_per_s, "replaced": res.replaced})
        raise typer.Exit(EXIT_OK)
    console.print(f"[green]stored[/] {escape(md.path)}: {_fmt(md.true_size)} in {md.pages} "
                  f"pages of {_fmt(md.page_size)} ({_fmt(int(res.rate_bytes_per_s))}/s, "
                  f"{res.seconds:.2f} s){' · replaced' if res.replaced else ''} · pages "
                  f"{_nodes(md)}")


def _mounts(host, profile, mount):
    from hosttune.models import store

    prof = _profile(profile)
    if mount is not None:
        return [run_guarded(store.resolve_mount, host, prof, mount)]
    return store.store_mounts(host, prof)


@app.command("list")
def list_cmd(
    mount: MountOpt = None,
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List stored models: true size, pages, pages per NUMA node, checksum."""
    from hosttune.models import store

    host = make_host(root)
    mounts = _mounts(host, profile, mount)
    models = run_guarded(store.list_models, host, mounts)
    if json_out:
        emit_json({"mounts": [m.path for m in mounts], "models": [x.to_json() for x in models]})
        raise typer.Exit(EXIT_OK)
    t = Table(title="hosttune models" + (f" · root {host.root}" if host.offline else ""),
              header_style="bold")
    for col in ("name", "mount", "size", "pages", "per node", "checksum", "status"):
        t.add_column(col, overflow="fold")
    for x in models:
        status = ("[yellow]partial load[/]" if x.partial else
                  "[green]ok[/]" if x.trailer else "[red]not a store file[/]")
        ck = "-" if x.trailer is None or x.trailer.algo == 0 else f"{x.trailer.checksum:016x}"
        t.add_row(escape(x.name), escape(x.mount), _fmt(x.true_size),
                  f"{x.pages} x {_fmt(x.page_size)}", _nodes(x), ck, status)
    console.print(t)
    if not models:
        console.print("no models stored (mounts: "
                      + escape(", ".join(m.path for m in mounts) or "none") + ")")


@app.command("verify")
def verify_cmd(
    name: Annotated[str | None, typer.Argument(help="Model name (default: all).")] = None,
    mount: MountOpt = None,
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check trailers, padding and checksums (exit 1 when a model fails)."""
    from hosttune.models import store

    host = make_host(root)
    mounts = _mounts(host, profile, mount)
    if name is not None:
        models = [run_guarded(store.find_model, host, mounts, name)]
    else:
        models = run_guarded(store.list_models, host, mounts, nodes=False)
    results = [run_guarded(store.verify_model, host, x) for x in models]
    bad = [r for r in results if not r.ok]
    if json_out:
        emit_json([{"name": r.model.name, "mount": r.model.mount, "ok": r.ok,
                    "checksum_checked": r.checksum_checked, "problems": list(r.problems)}
                   for r in results])
    else:
        for r in results:
            if r.ok:
                what = "checksum ok" if r.checksum_checked else "trailer ok (no checksum)"
                console.print(f"[green]ok[/] {escape(r.model.path)}: {what}")
            else:
                console.print(f"[bold red]failed[/] {escape(r.model.path)}: "
                              + escape("; ".join(r.problems)))
        if not results:
            console.print("no models to verify")
    raise typer.Exit(EXIT_FINDINGS if bad else EXIT_OK)


@app.command("unload")
def unload_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    mount: MountOpt = None,
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove a model from the store; its pages go back to the pool (once no process maps it)."""
    from hosttune.models import store

    host = make_host(root)
    if host.offline:
        fail("models unload returns pages to the live huge-page pool; it does not work with "
             "--root")
    mounts = _mounts(host, profile, mount)
    model = run_guarded(store.find_model, host, mounts, name)
    res = run_guarded(store.unload_model, host, model)
    if json_out:
        emit_json({"model": model.to_json(), "pages_freed_now": res.pages_freed_now,
                   "in_use_by": list(res.in_use_by)})
        raise typer.Exit(EXIT_OK)
    msg = f"[green]unloaded[/] {escape(model.path)}: {model.pages} pages"
    if res.in_use_by:
        msg += (" return to the pool when these processes exit: "
                + escape(", ".join(map(str, res.in_use_by))))
    else:
        msg += " back in the pool"
    console.print(msg)


@app.command("pool")
def pool_cmd(
    profile: ProfileOpt = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pool and mount sizes the stored models plus the profile's declared ones need
    (exit 1 when the pool or a mount is too small)."""
    from hosttune.models import store

    host = make_host(root)
    prof = _profile(profile)
    needs = run_guarded(store.pool_needs, host, prof)
    short = any(n.short_pages or n.short_mounts() for n in needs)
    if json_out:
        emit_json([{
            "page_size_bytes": n.page_size, "stored_pages": n.stored_pages,
            "planned_pages": n.planned_pages, "needed_pages": n.needed_pages,
            "needed_bytes": n.needed_pages * n.page_size, "pool_pages": n.pool.total,
            "pool_free_pages": n.pool.free, "short_pages": n.short_pages,
            "mounts": {k: {"needed_bytes": v * n.page_size,
                           "limit_bytes": n.mount_limits.get(k)} for k, v in n.mounts.items()},
            "short_mounts": n.short_mounts(), "unknown_size": list(n.unknown)}
            for n in needs])
        raise typer.Exit(EXIT_FINDINGS if short else EXIT_OK)
    if not needs:
        console.print("no stored or declared models")
        raise typer.Exit(EXIT_OK)
    for n in needs:
        ps = _fmt(n.page_size)
        console.print(f"[bold]{ps} pages[/]: stored {n.stored_pages} + planned "
                      f"{n.planned_pages} = {n.needed_pages} pages "
                      f"({_fmt(n.needed_pages * n.page_size)}); pool {n.pool.total} "
                      f"({n.pool.free} free)")
        if n.short_pages:
            console.print(f"  [bold red]pool too small[/] by {n.short_pages} pages: set "
                          f"hugepages.pools[].size (pagesize {ps}) to at least "
                          f"{_fmt(n.needed_pages * n.page_size)} and run `hosttune apply`")
        for mp, pages in n.mounts.items():
            lim = n.mount_limits.get(mp)
            state = ("[bold red]too small[/]" if mp in n.short_mounts() else "[green]ok[/]")
            console.print(f"  mount {escape(mp)}: needs {_fmt(pages * n.page_size)}, size= "
                          f"{_fmt(lim) if lim is not None else 'unlimited/unknown'} {state}")
        if n.unknown:
            console.print("  size unknown (give size: or a readable file:): "
                          + escape(", ".join(n.unknown)))
    raise typer.Exit(EXIT_FINDINGS if short else EXIT_OK)


@shim_app.command("build")
def shim_build(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Where to write the "
                                               "library (default: /usr/local/lib/hosttune/"
                                               "libhosttune-shim.so).")] = None,
    cc: Annotated[str | None, typer.Option("--cc", help="C compiler (default: cc).")] = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compile the LD_PRELOAD shim with the system C compiler."""
    from hosttune.models import shim

    host = make_host(root)
    res = run_guarded(shim.build_shim, host, output or shim.DEFAULT_OUTPUT, cc=cc)
    if json_out:
        emit_json({"output": res.output, "argv": list(res.argv), "skipped": res.skipped})
        raise typer.Exit(EXIT_OK)
    if res.skipped:
        console.print(f"[dim]skipped (--root)[/]: {escape(' '.join(res.argv))}")
    else:
        console.print(f"[green]built[/] {escape(res.output)}\n  use: "
                      f"LD_PRELOAD={escape(res.output)} <loader>")

