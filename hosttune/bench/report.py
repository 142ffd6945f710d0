"""The whole `hosttune bench llama` run: A/B throughput, cold start, roofline."""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec
from msgspec import field

from hosttune.bench.coldstart import (
    FALLBACK_PROMPT,
    PROMPT,
    ColdStart,
    drop_caches,
    time_first_token,
    warm_program,
)
from hosttune.bench.llama import ABResult, Arm, pinned_cpus, run_ab
from hosttune.bench.roofline import Bandwidth, Roofline, measure_bandwidth
from hosttune.bench.stats import Summary, summarize
from hosttune.errors import HostError
from hosttune.host import Host


class BenchConfig(msgspec.Struct, frozen=True):
    model: str
    llama_bench: str
    store_model: str | None = None  # the same model's file in the huge-page store
    llama_simple: str | None = None  # enables the cold-start measurement
    rounds: int = 5
    reps: int = 3
    n_prompt: int = 64
    n_gen: int = 32
    threads: int | None = None
    pinning: bool = True
    cold_rounds: int = 5
    roofline: bool = True


class BenchReport(msgspec.Struct):
    config: BenchConfig
    cpus_pinned: tuple[int, ...]
    threads: int
    ab: ABResult
    cold: list[ColdStart] = field(default_factory=list)
    cold_note: str = ""
    cold_prompt: str = PROMPT
    bandwidth: Bandwidth | None = None
    roofline: dict[str, Roofline] = field(default_factory=dict)  # arm -> roofline

    def cold_summary(self) -> dict[str, Summary]:
        arms = dict.fromkeys(c.arm for c in self.cold)
        return {a: summarize([c.seconds for c in self.cold if c.arm == a]) for a in arms}

    @property
    def regressions(self) -> list[str]:
        """Comparisons where the tuned arm (B) is slower beyond the spread."""
        return [f"{name} ({kind})" for name, kinds in self.ab.comparisons.items()
                for kind, c in kinds.items() if c.verdict == "slower"]

    def to_json(self) -> dict[str, object]:
        return {
            "config": msgspec.structs.asdict(self.config),
            "threads": self.threads, "cpus_pinned": list(self.cpus_pinned),
            "argv_example": list(self.ab.argv),
            "samples": [{"arm": s.arm, "round": s.round, "seconds": s.seconds,
                         "results": [msgspec.structs.asdict(r) for r in s.results]}
                        for s in self.ab.samples],
            "summaries": {a: {k: s.to_json() for k, s in d.items()}
                          for a, d in self.ab.summaries.items()},
            "comparisons": {n: {k: c.to_json() for k, c in d.items()}
                            for n, d in self.ab.comparisons.items()},
            "cold_start": {"method": "llama-simple -n 1: process start to first token on stdout",
                           "prompt": self.cold_prompt, "note": self.cold_note,
                           "runs": [msgspec.structs.asdict(c) for c in self.cold],
                           "summary": {a: s.to_json() for a, s in self.cold_summary().items()}},
            "bandwidth": None if self.bandwidth is None else {
                "bytes_per_s": self.bandwidth.bytes_per_s, "threads": self.bandwidth.threads,
                "bytes_read": self.bandwidth.bytes_read, "seconds": self.bandwidth.seconds},
            "roofline": {a: r.to_json() for a, r in self.roofline.items()},
            "regressions": self.regressions,
        }


def run_bench(host: Host, cfg: BenchConfig,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    if host.offline:
        raise HostError("bench measures the live host; it does not work with --root")
    for p in (cfg.model, cfg.llama_bench, cfg.store_model, cfg.llama_simple):
        if p is not None and not os.path.exists(p):
            raise HostError(f"{p}: no such file")
    say = progress or (lambda _m: None)
    cpus = pinned_cpus(host)
    threads = cfg.threads or len(cpus)
    arms = [Arm("cache/unpinned", cfg.model)]
    pairs: list[tuple[str, str]] = []
    if cfg.store_model:
        arms.append(Arm("store/unpinned", cfg.store_model))
        pairs.append(("cache/unpinned", "store/unpinned"))
    if cfg.pinning:
        arms.append(Arm("cache/pinned", cfg.model, cpus))
        pairs.append(("cache/unpinned", "cache/pinned"))
        if cfg.store_model:
            arms.append(Arm("store/pinned", cfg.store_model, cpus))
            pairs.append(("cache/unpinned", "store/pinned"))
    ab = run_ab(host, cfg.llama_bench, arms, rounds=cfg.rounds, threads=threads,
                n_prompt=cfg.n_prompt, n_gen=cfg.n_gen, reps=cfg.reps, pairs=pairs,
                progress=lambda i, n, a: say(f"llama-bench {i + 1}/{n}: {a}"))
    rep = BenchReport(cfg, cpus, threads, ab)
    if cfg.llama_simple:
        _cold(host, cfg, rep, say)
    if cfg.roofline:
        say("memory read bandwidth")
        rep.bandwidth = measure_bandwidth(host, threads=threads)
        for arm, kinds in ab.summaries.items():
            size = next((r.model_size_bytes for s in ab.samples if s.arm == arm
                         for r in s.results if r.model_size_bytes), None)
            if "tg" in kinds and size:
                rep.roofline[arm] = Roofline(kinds["tg"].median, size,
                                             rep.bandwidth.bytes_per_s)
    return rep


def _cold(host: Host, cfg: BenchConfig, rep: BenchReport, say: Callable[[str], None]) -> None:
    assert cfg.llama_simple is not None
    simple = cfg.llama_simple
    if not host.is_root:
        rep.cold_note = ("not root: the page cache cannot be dropped, so only the warm page "
                         "cache (and the store) were timed")
    else:
        rep.cold_note = ("page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before "
                         "each 'store' and 'cold cache' run, then llama-simple and its shared "
                         "libraries read back, so only the model's residency differs; the store "
                         "is hugetlbfs and stays")
    # llama-simple itself once, so the first timed run does not pay for a first exec of it;
    # this run also finds out whether the model takes the empty (BOS-only) prompt
    try:
        time_first_token(host, simple, cfg.model, arm="prime", prompt=PROMPT)
    except HostError as err:
        rep.cold_prompt = FALLBACK_PROMPT
        rep.cold_note += (f"; the empty prompt failed ({str(err).strip()[-120:]}), so the "
                          f"prompt is {FALLBACK_PROMPT!r}")
        time_first_token(host, simple, cfg.model, arm="prime", prompt=FALLBACK_PROMPT)
    prompt = rep.cold_prompt
    for i in range(cfg.cold_rounds):
        say(f"cold start round {i + 1}/{cfg.cold_rounds}")
        if cfg.store_model:
            if host.is_root:
                drop_caches(host)
                warm_program(host, simple)
            rep.cold.append(time_first_token(host, simple, cfg.store_model, arm="store",
                                              prompt=prompt))
        if host.is_root:
            drop_caches(host)
            warm_program(host, simple)
            rep.cold.append(time_first_token(host, simple, cfg.model, arm="cold cache",
                                              prompt=prompt))
        # the cold run just read the file: it is in the page cache now
        rep.cold.append(time_first_token(host, simple, cfg.model, arm="warm cache",
                                          prompt=prompt))
