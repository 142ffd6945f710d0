"""Small-sample statistics for A/B benchmark runs (no scipy: the t table is inlined).

Each sample is one llama-bench invocation's mean tokens/s; invocations of the arms are
interleaved (A B A B ...) so slow drifts of the host hit both arms alike."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

import msgspec

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30 (any statistics table).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: float) -> float:
    """t quantile for a two-sided 95% interval; df rounded down (conservative), 1.96 above 30."""
    if df < 1:
        return math.inf
    d = int(df)
    return _T975[d - 1] if d <= 30 else 1.96


class Summary(msgspec.Struct, frozen=True):
    n: int
    median: float
    mean: float
    min: float
    max: float
    stdev: float  # sample standard deviation (0 for n < 2)
    ci95_low: float  # t-based 95% interval of the mean
    ci95_high: float

    def to_json(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__struct_fields__}


def summarize(xs: Sequence[float]) -> Summary:
    if not xs:
        raise ValueError("no samples")
    n = len(xs)
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if n > 1 else 0.0
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else math.inf
    return Summary(n, statistics.median(xs), mean, min(xs), max(xs), sd, mean - half, mean + half)


class Comparison(msgspec.Struct, frozen=True):
    """B relative to A. ``verdict`` is "faster"/"slower" only when the 95% interval of the
    difference excludes zero; otherwise "no difference beyond the spread"."""

    a: Summary
    b: Summary
    diff_mean: float  # mean(B) - mean(A)
    diff_ci95: tuple[float, float]  # Welch t interval of the difference of means
    median_ratio: float  # median(B) / median(A)
    median_ratio_ci95: tuple[float, float]  # percentile bootstrap of the ratio of medians
    ranges_overlap: bool
    verdict: str

    @property
    def change_pct(self) -> float:
        return (self.median_ratio - 1.0) * 100.0

    def to_json(self) -> dict[str, object]:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "diff_mean": self.diff_mean,
                "diff_ci95": list(self.diff_ci95), "median_ratio": self.median_ratio,
                "median_ratio_ci95": list(self.median_ratio_ci95),
                "change_pct": self.change_pct, "ranges_overlap": self.ranges_overlap,
                "verdict": self.verdict}


def welch_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """95% interval of mean(b) - mean(a) (Welch-Satterthwaite degrees of freedom)."""
    na, nb = len(a), len(b)
    d = statistics.fmean(b) - statistics.fmean(a)
    if na < 2 or nb < 2:
        return (-math.inf, math.inf)
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return (d, d)
    df = (va + vb) ** 2 / ((va * va / (na - 1)) + (vb * vb / (nb - 1)))
    h = t975(df) * se
    return (d - h, d + h)


def bootstrap_median_ratio(a: Sequence[float], b: Sequence[float], *, iters: int = 2000,
                           seed: int = 1) -> tuple[float, float]:
    """Percentile bootstrap (95%) of median(b)/median(a); seeded, so reports are reproducible."""
    rng = random.Random(seed)  # noqa: S311 - resampling, not security
    ratios = []
    for _ in range(iters):
        ma = statistics.median(rng.choices(a, k=len(a)))
        mb = statistics.median(rng.choices(b, k=len(b)))
        ratios.append(mb / ma if ma else math.inf)
    ratios.sort()
    return (ratios[int(0.025 * iters)], ratios[min(iters - 1, int(0.975 * iters))])


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison:
    sa, sb = summarize(a), summarize(b)
    lo, hi = welch_ci(a, b)
    if lo > 0:
        verdict = "faster"
    elif hi < 0:
        verdict = "slower"
    else:
        verdict = "no difference beyond the spread"
    return Comparison(
        sa, sb, sb.mean - sa.mean, (lo, hi),
        sb.median / sa.median if sa.median else math.inf,
        bootstrap_median_ratio(a, b),
        not (sb.min > sa.max or sa.min > sb.max), verdict)
