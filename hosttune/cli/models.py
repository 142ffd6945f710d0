"""hosttune models load|list|verify|unload|pool  and  hosttune shim build"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from hosttune.cli import argspec
from hosttune.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    JsonOpt,
    ProfileOpt,
    RootOpt,
    console,
    emit_json,
    fail,
    make_host,
    run_guarded,
)

app = typer.Typer(help="Huge-page model store: load models into hugetlbfs once, map them "
                  "everywhere.", no_args_is_help=True)
shim_app = typer.Typer(help="The LD_PRELOAD shim that shows loaders a stored model's true "
                       "size.", no_args_is_help=True)

MountOpt = Annotated[str | None, argspec.typer_info(argspec.MOUNT)]


def _profile(profile: str | None):
    """The profile when one is given or the default loads; models commands also work
    without one (mounts come from the live mount table)."""
    from hosttune.cli.common import load

    return run_guarded(load, profile).profile


def _fmt(n: int) -> str:
    from hosttune.profile.sizes import format_size

    return format_size(n)


@app.command("load")
@argspec.typer_params(argspec.MODELS_LOAD)
def load_cmd(**args: Any) -> None:
    """Copy a model into a hugetlbfs store (parallel reads, no partial file on failure)."""
    from hosttune.cli.models_fast import run_load

    raise typer.Exit(run_load(**args))


def _mounts(host, profile, mount):
    from hosttune.models import store

    prof = _profile(profile)
    if mount is not None:
        return [run_guarded(store.resolve_mount, host, prof, mount)]
    return store.store_mounts(host, prof)


@app.command("list")
@argspec.typer_params(argspec.MODELS_LIST)
def list_cmd(**args: Any) -> None:
    """List stored models: true size, pages, pages per NUMA node, checksum."""
    from hosttune.cli.models_fast import run_list

    raise typer.Exit(run_list(**args))


@app.command("verify")
@argspec.typer_params(argspec.MODELS_VERIFY)
def verify_cmd(**args: Any) -> None:
    """Check trailers, padding and checksums (exit 1 when a model fails)."""
    from hosttune.cli.models_fast import run_verify

    raise typer.Exit(run_verify(**args))


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
                + ", ".join(map(str, res.in_use_by)))
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

