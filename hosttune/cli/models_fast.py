"""`hosttune models load|list|verify`, without typer, rich or PyYAML.

A load's whole-process time is its start plus the copy, and the copy of a few GiB takes a few
tenths of a second: typer + click + rich + PyYAML (~0.2 s of imports and profile
validation on a 2-vCPU VM) would cost as much as the copy itself. So, as for audit
(audit_cmd.py), ``main`` sends the plain forms of these commands here: `parse_args` reads
the options of argspec.MODELS, which the typer commands (cli/models.py) are built from too,
and everything else - ``--help``, a typo, an option it does not know - goes to the typer app,
which explains usage errors. The typer commands call the same `run_*` functions: one
implementation, two ways in.

The profile (for the default mount and the declared models) comes from the profile cache on a
hit (profile/cache.py: the schema's Structs, decoded with msgspec, no PyYAML); the progress
line and the table are plain text; rich is imported only to print an error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hosttune.cli import argspec
from hosttune.cli.audit_cmd import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, emit_json, print_error


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any] | None:
    """``models COMMAND ARGS`` as (command, `run_*` keywords), or None for anything that is
    not a plain form of the command (typer then parses it and explains errors). The options
    are argspec.MODELS[COMMAND], which the typer commands are built from too."""
    spec = argspec.MODELS.get(argv[0]) if argv else None
    args = None if spec is None else argspec.parse(spec, argv[1:], environ)
    return None if args is None else {"command": argv[0], **args}


def run(args: dict[str, Any]) -> int:
    kw = dict(args)
    cmd = kw.pop("command")
    fns: dict[str, Callable[..., int]] = {"load": run_load, "list": run_list,
                                          "verify": run_verify}
    return fns[cmd](**kw)


# --- shared -----------------------------------------------------------------------------------
class _Fail(Exception):
    """A one-line error for the user (exit 2)."""


def _host(root: Path | None) -> Any:
    from hosttune.host import Host

    if root is not None:
        if not root.is_dir():
            raise _Fail(f"--root {root}: not a directory")
        return Host(root)
    return Host("/")


def _profile(profile: str | None) -> Any:
    """The profile (default 'inference'); from the cache without PyYAML when it is cached."""
    from hosttune.profile.loader import load_profile

    return load_profile(profile or "inference").profile


def _guard(fn: Any, *args: Any, **kwargs: Any) -> int:
    from hosttune.errors import HosttuneError

    try:
        return int(fn(*args, **kwargs))
    except (_Fail, HosttuneError) as err:
        print_error(str(err))
        return EXIT_ERROR


def _mounts(host: Any, profile: str | None, mount: str | None) -> list[Any]:
    from hosttune.models import store

    prof = _profile(profile)
    if mount is not None:
        return [store.resolve_mount(host, prof, mount)]
    return store.store_mounts(host, prof)


def _fmt(n: float) -> str:
    from hosttune.profile.sizes import format_size

    return format_size(int(n))


def _nodes(m: Any) -> str:
    if m.pages_per_node is None:
        return "?"
    return " ".join(f"N{k}={v}" for k, v in sorted(m.pages_per_node.items())) or "-"


def _gbps(rate: float) -> str:
    return f"{rate / 1e9:.2f} GB/s"


# --- load -------------------------------------------------------------------------------------
class ProgressLine:
    """The copy's progress on a terminal (stderr), redrawn at most every 0.1 s: bytes, the
    average rate since the copy began (LoadProgress), ETA. Nothing when stderr is not a
    terminal or the output is JSON."""

    def __init__(self, label: str, stream: Any = None, enabled: bool = True) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.drawn = False

    def __call__(self, p: Any) -> None:
        if not self.enabled or p.total <= 0:
            return
        width = 24
        fill = int(width * p.done / p.total)
        eta = p.eta_s
        line = (f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {_fmt(p.done)}/"
                f"{_fmt(p.total)} {_gbps(p.rate_bytes_per_s)}"
                + (f" ETA {eta:.1f} s" if eta is not None and p.done < p.total else ""))
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def run_load(file: str, name: str | None, mount: str | None, node: int | None, replace: bool,
             checksum: bool, threads: int | None, profile: str | None, root: Path | None,
             json_out: bool) -> int:
    return _guard(_load, file, name, mount, node, replace, checksum, threads, profile, root,
                  json_out)


def _load(file: str, name: str | None, mount: str | None, node: int | None, replace: bool,
          checksum: bool, threads: int | None, profile: str | None, root: Path | None,
          json_out: bool) -> int:
    from hosttune.models import store

    host = _host(root)
    if host.offline:
        raise _Fail("models load fills the live huge-page pool; it does not work with --root")
    prof = _profile(profile)
    # A model the profile declares brings its mount and node (the options still win).
    target = name or file.rstrip("/").rsplit("/", 1)[-1]
    declared = prof.models.declared if prof.models else []
    decl = next((d for d in declared if d.name == target), None)
    if decl is not None:
        mount = mount or decl.mount
        node = node if node is not None else decl.node
    m = store.resolve_mount(host, prof, mount)
    bar = ProgressLine(target, enabled=not json_out)
    try:
        res = store.load_model(host, file, m, name=name, node=node, replace=replace,
                               checksum=checksum, threads=threads, progress=bar)
    except KeyboardInterrupt as err:
        raise _Fail("interrupted: nothing was stored") from err
    finally:
        bar.close()
    md = res.model
    copy_rate = md.true_size / res.copy_seconds if res.copy_seconds > 0 else 0.0
    if json_out:
        emit_json({"model": md.to_json(), "seconds": res.seconds, "threads": res.threads,
                   "rate_bytes_per_s": res.rate_bytes_per_s,
                   "copy_seconds": res.copy_seconds, "copy_rate_bytes_per_s": copy_rate,
                   "fill": res.fill, "replaced": res.replaced})
        return EXIT_OK
    sys.stdout.write(
        f"stored {md.path}: {_fmt(md.true_size)} in {md.pages} pages of {_fmt(md.page_size)}"
        f"{' · replaced' if res.replaced else ''} · pages {_nodes(md)}\n"
        f"copied at {_gbps(copy_rate)} ({res.copy_seconds:.2f} s"
        f"{', checksum on the way' if checksum else ''}, {res.fill}); whole load "
        f"{_gbps(res.rate_bytes_per_s)} ({res.seconds:.2f} s, {res.threads} threads)\n")
    return EXIT_OK


# --- list / verify ----------------------------------------------------------------------------
def _table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = [title, "  ".join(h.upper().ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run_list(mount: str | None, profile: str | None, root: Path | None, json_out: bool) -> int:
    return _guard(_list, mount, profile, root, json_out)


def _list(mount: str | None, profile: str | None, root: Path | None, json_out: bool) -> int:
    from hosttune.models import store

    host = _host(root)
    mounts = _mounts(host, profile, mount)
    models = store.list_models(host, mounts)
    if json_out:
        emit_json({"mounts": [m.path for m in mounts], "models": [x.to_json() for x in models]})
        return EXIT_OK
    rows = []
    for x in models:
        status = "partial load" if x.partial else "ok" if x.trailer else "not a store file"
        ck = "-" if x.trailer is None or x.trailer.algo == 0 else f"{x.trailer.checksum:016x}"
        rows.append((x.name, x.mount, _fmt(x.true_size), f"{x.pages} x {_fmt(x.page_size)}",
                     _nodes(x), ck, status))
    title = "hosttune models" + (f" · root {host.root}" if host.offline else "")
    sys.stdout.write(_table(title, ("name", "mount", "size", "pages", "per node", "checksum",
                                    "status"), rows))
    if not models:
        sys.stdout.write("no models stored (mounts: "
                         + (", ".join(m.path for m in mounts) or "none") + ")\n")
    return EXIT_OK


def run_verify(name: str | None, mount: str | None, profile: str | None, root: Path | None,
               json_out: bool) -> int:
    return _guard(_verify, name, mount, profile, root, json_out)


def _verify(name: str | None, mount: str | None, profile: str | None, root: Path | None,
            json_out: bool) -> int:
    from hosttune.models import store

    host = _host(root)
    mounts = _mounts(host, profile, mount)
    if name is not None:
        models = [store.find_model(host, mounts, name)]
    else:
        models = store.list_models(host, mounts, nodes=False)
    results = [store.verify_model(host, x) for x in models]
    bad = [r for r in results if not r.ok]
    if json_out:
        emit_json([{"name": r.model.name, "mount": r.model.mount, "ok": r.ok,
                    "checksum_checked": r.checksum_checked, "problems": list(r.problems)}
                   for r in results])
    else:
        for r in results:
            if r.ok:
                what = "checksum ok" if r.checksum_checked else "trailer ok (no checksum)"
                sys.stdout.write(f"ok {r.model.path}: {what}\n")
            else:
                sys.stdout.write(f"failed {r.model.path}: " + "; ".join(r.problems) + "\n")
        if not results:
            sys.stdout.write("no models to verify\n")
    return EXIT_FINDINGS if bad else EXIT_OK


def main_models(argv: Sequence[str]) -> int | None:
    """The exit code of a plain ``models load|list|verify`` form, or None (typer's turn)."""
    args = parse_args(argv, os.environ)
    return None if args is None else run(args)
