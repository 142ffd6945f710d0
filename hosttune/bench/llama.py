"""Interleaved A/B runs of llama.cpp's llama-bench.

Arms differ in where the model file lives (page cache vs the huge-page store) and in CPU
pinning (unpinned vs ``taskset -c CPUS``). Every round runs each arm once, the order rotated
each round (A B, B A, ...), so drift of the host (other tenants, thermals) hits all arms alike.
One sample = one llama-bench invocation's mean tokens/s over its ``-r`` repetitions."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from msgspec import field

from hosttune.bench.parse import BenchResult, parse_json
from hosttune.bench.stats import Comparison, Summary, compare, summarize
from hosttune.errors import HostError
from hosttune.host import Host


class Arm(msgspec.Struct, frozen=True):
    name: str  # e.g. "cache/unpinned"
    model: str  # path llama-bench opens
    cpus: tuple[int, ...] = ()  # () = unpinned


class RunSample(msgspec.Struct, frozen=True):
    arm: str
    round: int
    results: tuple[BenchResult, ...]
    seconds: float


class ABResult(msgspec.Struct, frozen=True):
    samples: tuple[RunSample, ...]
    summaries: dict[str, dict[str, Summary]]  # arm -> kind ("pp"/"tg") -> summary
    comparisons: dict[str, dict[str, Comparison]] = field(default_factory=dict)  # "B vs A"
    argv: tuple[str, ...] = ()

    def values(self, arm: str, kind: str) -> list[float]:
        return [r.avg_ts for s in self.samples if s.arm == arm for r in s.results
                if r.kind == kind]


def pinned_cpus(host: Host) -> tuple[int, ...]:
    """One logical CPU per physical core (the first SMT thread) of the whole machine: what the
    container planner gives a single worker that owns the host. (Computed from the host's
    topology here, not from hosttune.containers' planner.)"""
    return tuple(core[0] for core in host.facts.physical_cores)


def bench_argv(llama_bench: str, arm: Arm, *, threads: int, n_prompt: int, n_gen: int,
               reps: int) -> list[str]:
    argv = [llama_bench, "-m", arm.model, "-t", str(threads), "-p", str(n_prompt),
            "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    if arm.cpus:
        argv = ["taskset", "-c", ",".join(map(str, arm.cpus)), *argv]
    return argv


def run_ab(host: Host, llama_bench: str, arms: list[Arm], *, rounds: int = 5, threads: int,
           n_prompt: int = 64, n_gen: int = 32, reps: int = 3,
           pairs: list[tuple[str, str]] | None = None,
           progress: Callable[[int, int, str], None] | None = None) -> ABResult:
    """Run ``rounds`` interleaved rounds over ``arms``; compare each (A, B) in ``pairs``."""
    if host.offline:
        raise HostError("bench measures the live host; it does not work with --root")
    if len(arms) < 1 or rounds < 1:
        raise HostError("bench needs at least one arm and one round")
    samples: list[RunSample] = []
    total = rounds * len(arms)
    for r in range(rounds):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        for arm in order:
            if progress:
                progress(len(samples), total, arm.name)
            argv = bench_argv(llama_bench, arm, threads=threads, n_prompt=n_prompt,
                              n_gen=n_gen, reps=reps)
            t0 = time.perf_counter()
            res = host.run(argv, timeout_s=600)
            if res.returncode != 0:
                raise HostError(f"llama-bench failed (exit {res.returncode}) on arm {arm.name}:"
                                f" {res.stderr.strip()[-400:]}")
            samples.append(RunSample(arm.name, r, tuple(parse_json(res.stdout)),
                                     time.perf_counter() - t0))
    out = ABResult(tuple(samples), {}, {}, tuple(bench_argv(
        llama_bench, arms[0], threads=threads, n_prompt=n_prompt, n_gen=n_gen, reps=reps)))
    for arm in arms:
        out.summaries[arm.name] = {k: summarize(v) for k in ("pp", "tg")
                                   if (v := out.values(arm.name, k))}
    for a, b in pairs or []:
        out.comparisons[f"{b} vs {a}"] = {
            k: compare(out.values(a, k), out.values(b, k)) for k in ("pp", "tg")
            if out.values(a, k) and out.values(b, k)}
    return out
