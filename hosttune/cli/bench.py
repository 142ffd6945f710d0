"""hosttune bench llama: does the tuning help on this host, measured with real llama.cpp."""

from __future__ import annotations

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
    err_console,
    fail,
    make_host,
    run_guarded,
)

app = typer.Typer(help="Benchmarks that show whether the tuning helps on this host.",
                  no_args_is_help=True)


def _which(given: str | None, name: str) -> str | None:
    import shutil

    if given:
        return given
    return shutil.which(name)


@app.command("llama")
def llama(
    model: Annotated[str, typer.Option("--model", help="GGUF model file (page-cache arm).")],
    llama_bench: Annotated[str | None, typer.Option(
        "--llama-bench", help="llama-bench binary (default: from PATH).")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="The same model in the huge-page store (`hosttune models load`): "
        "adds the store arms.")] = None,
    llama_simple: Annotated[str | None, typer.Option(
        "--llama-simple", help="llama-simple binary for the cold start (default: from PATH; "
        "skipped if absent).")] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds.")] = 5,
    reps: Annotated[int, typer.Option("--reps", min=1, help="llama-bench -r.")] = 3,
    n_prompt: Annotated[int, typer.Option("--pp", min=1, help="Prompt tokens (-p).")] = 64,
    n_gen: Annotated[int, typer.Option("--tg", min=1, help="Generated tokens (-n).")] = 32,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Threads (default: one per physical core).")] = None,
    pinning: Annotated[bool, typer.Option("--pinning/--no-pinning",
                                          help="Add the pinned arms.")] = True,
    cold_rounds: Annotated[int, typer.Option("--cold-rounds", min=0)] = 5,
    roofline: Annotated[bool, typer.Option("--roofline/--no-roofline")] = True,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A/B llama-bench (page cache vs store, unpinned vs pinned), cold start, roofline."""
    from hosttune.bench.report import BenchConfig, run_bench

    host = make_host(root)
    if host.offline:
        fail("bench measures the live host; it does not work with --root")
    lb = _which(llama_bench, "llama-bench")
    if lb is None:
        fail("llama-bench not found: pass --llama-bench PATH (bench/llama_e2e.py builds one)")
    ls = _which(llama_simple, "llama-simple") if cold_rounds else None
    cfg = BenchConfig(model=model, llama_bench=lb, store_model=store, llama_simple=ls,
                      rounds=rounds, reps=reps, n_prompt=n_prompt, n_gen=n_gen,
                      threads=threads, pinning=pinning, cold_rounds=cold_rounds,
                      roofline=roofline)
    if json_out:
        rep = run_guarded(run_bench, host, cfg)
    else:
        with err_console.status("bench") as st:
            rep = run_guarded(run_bench, host, cfg, progress=lambda m: st.update(escape(m)))
    code = EXIT_FINDINGS if rep.regressions else EXIT_OK
    if json_out:
        emit_json(rep.to_json())
        raise typer.Exit(code)
    t = Table(title=f"llama-bench tokens/s ({rep.threads} threads, {cfg.rounds} rounds "
              f"interleaved, pinned = CPUs {','.join(map(str, rep.cpus_pinned))})")
    for c in ("arm", "test", "median", "min-max", "mean 95% CI"):
        t.add_column(c)
    for arm, kinds in rep.ab.summaries.items():
        for kind, s in kinds.items():
            t.add_row(arm, kind, f"{s.median:.2f}", f"{s.min:.2f}-{s.max:.2f}",
                      f"{s.ci95_low:.2f}-{s.ci95_high:.2f}")
    console.print(t)
    for name, kinds in rep.ab.comparisons.items():
        for kind, c in kinds.items():
            style = {"faster": "green", "slower": "red"}.get(c.verdict, "dim")
            console.print(f"{escape(name)} {kind}: median {c.change_pct:+.1f}% "
                          f"(diff 95% CI {c.diff_ci95[0]:+.2f}..{c.diff_ci95[1]:+.2f} t/s) "
                          f"[{style}]{c.verdict}[/]")
    if rep.cold or rep.cold_note:
        console.print(f"cold start (process start -> first token): {escape(rep.cold_note)}")
        for arm, s in rep.cold_summary().items():
            console.print(f"  {arm:<11} median {s.median:.3f} s  (min {s.min:.3f}, "
                          f"max {s.max:.3f}, n={s.n})")
    if rep.bandwidth:
        console.print(f"memory read bandwidth: {rep.bandwidth.bytes_per_s / 1e9:.1f} GB/s "
                      f"({rep.bandwidth.threads} threads)")
        for arm, r in rep.roofline.items():
            console.print(f"  {arm:<15} decode {r.decode_tokens_per_s:.1f} tok/s x "
                          f"{r.bytes_per_token / 1e6:.0f} MB/token = "
                          f"{r.achieved_bytes_per_s / 1e9:.1f} GB/s = {r.fraction:.0%} of the "
                          f"roof ({r.ceiling_tokens_per_s:.1f} tok/s)")
    if rep.regressions:
        console.print(f"[red]slower beyond the spread:[/] {escape(', '.join(rep.regressions))}")
    raise typer.Exit(code)
