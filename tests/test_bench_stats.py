"""Statistics of the A/B bench: values checked against hand/textbook computations."""

import math
import statistics

import pytest

from hosttune.bench import stats


def test_t_quantiles_match_the_table():
    assert stats.t975(1) == 12.706
    assert stats.t975(4) == 2.776
    assert stats.t975(4.9) == 2.776  # df rounded down: wider, conservative
    assert stats.t975(30) == 2.042
    assert stats.t975(200) == 1.96
    assert stats.t975(0.5) == math.inf


def test_summary_of_five_samples():
    s = stats.summarize([10.0, 12.0, 11.0, 13.0, 9.0])
    assert (s.n, s.median, s.mean, s.min, s.max) == (5, 11.0, 11.0, 9.0, 13.0)
    sd = statistics.stdev([10, 12, 11, 13, 9])  # sqrt(2.5)
    assert s.stdev == pytest.approx(1.5811388)
    half = 2.776 * sd / math.sqrt(5)
    assert (s.ci95_low, s.ci95_high) == pytest.approx((11 - half, 11 + half))


def test_summary_single_sample_has_unbounded_interval():
    s = stats.summarize([3.0])
    assert s.stdev == 0.0 and s.ci95_low == -math.inf and s.ci95_high == math.inf
    with pytest.raises(ValueError):
        stats.summarize([])


def test_welch_interval_by_hand():
    a = [30.0, 31.0, 29.0, 30.5]
    b = [33.0, 34.0, 32.5, 33.5, 34.5]
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 5
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    d = statistics.fmean(b) - statistics.fmean(a)
    h = stats.t975(df) * math.sqrt(va + vb)
    assert stats.welch_ci(a, b) == pytest.approx((d - h, d + h))


def test_clear_difference_gets_a_verdict():
    a = [30.0, 30.2, 29.9, 30.1, 30.0]
    b = [33.0, 33.1, 32.9, 33.2, 33.0]
    c = stats.compare(a, b)
    assert c.verdict == "faster"
    assert c.change_pct == pytest.approx(10.0)
    assert not c.ranges_overlap
    lo, hi = c.median_ratio_ci95
    assert 1.0 < lo <= c.median_ratio <= hi
    assert stats.compare(b, a).verdict == "slower"


def test_difference_inside_the_spread_gets_no_verdict():
    a = [30.0, 34.0, 28.0, 33.0, 31.0]
    b = [31.0, 29.0, 35.0, 30.0, 32.0]
    c = stats.compare(a, b)
    assert c.verdict == "no difference beyond the spread"
    assert c.ranges_overlap
    assert c.diff_ci95[0] < 0 < c.diff_ci95[1]


def test_identical_constant_arms_are_no_difference():
    c = stats.compare([5.0, 5.0, 5.0], [5.0, 5.0, 5.0])
    assert c.diff_ci95 == (0.0, 0.0)
    assert c.verdict == "no difference beyond the spread"


def test_bootstrap_is_seeded_and_reproducible():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]
    assert stats.bootstrap_median_ratio(a, b) == stats.bootstrap_median_ratio(a, b)
