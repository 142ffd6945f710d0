"""llama-bench output parsing, on output captured from real llama-bench runs on this machine
(tests/data/llama_bench/README.md has the exact commands)."""

import json
from pathlib import Path

import pytest

from hosttune.bench.parse import BenchParseError, parse_json, parse_md

DATA = Path(__file__).parent / "data" / "llama_bench"


def test_json_pp_and_tg():
    res = parse_json((DATA / "tg_pp.json").read_text())
    assert [r.test for r in res] == ["pp64", "tg32"]
    assert [r.kind for r in res] == ["pp", "tg"]
    raw = json.loads((DATA / "tg_pp.json").read_text())
    for r, t in zip(res, raw, strict=True):
        assert r.avg_ts == t["avg_ts"] and r.stddev_ts == t["stddev_ts"]
        assert r.samples_ts == tuple(t["samples_ts"]) and len(r.samples_ts) == 3
        assert r.n_threads == 2
        assert r.model_size_bytes == 820288256  # 782.29 MiB of tensors
        assert r.model_n_params == 771860480
        assert r.model_type == "llama ?B Q8_0" and r.backend == "CPU"


def test_json_several_thread_counts():
    res = parse_json((DATA / "threads.json").read_text())
    assert [(r.test, r.n_threads) for r in res] == [("pp16", 1), ("tg8", 1), ("pp16", 2),
                                                     ("tg8", 2)]
    assert all(len(r.samples_ts) == 2 for r in res)


def test_md_pp_and_tg():
    res = parse_md((DATA / "tg_pp.md").read_text())
    assert [(r.test, r.kind, r.n_threads) for r in res] == [("pp64", "pp", 2), ("tg32", "tg", 2)]
    assert (res[0].avg_ts, res[0].stddev_ts) == (55.66, 1.08)
    assert (res[1].avg_ts, res[1].stddev_ts) == (12.91, 6.43)
    assert res[0].model_size_bytes == pytest.approx(820288256, rel=1e-5)  # from "782.29 MiB"
    assert res[0].model_n_params == pytest.approx(771860480, rel=1e-5)  # from "771.86 M"
    assert res[0].samples_ts == ()  # md shows only mean ± stddev


def test_md_and_json_agree_on_structure():
    md = parse_md((DATA / "threads.md").read_text())
    js = parse_json((DATA / "threads.json").read_text())
    assert [(r.test, r.n_threads, r.kind) for r in md] == [(r.test, r.n_threads, r.kind)
                                                            for r in js]
    assert [r.avg_ts for r in md] == [24.40, 9.36, 51.53, 15.24]


def test_md_with_extra_columns_and_combined_test():
    text = ("| model | size | params | backend | threads | repack | test | t/s |\n"
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n"
            "| llama 7B Q4_0 | 3.56 GiB | 6.74 B | CPU | 16 | 0 | pp512+tg128 | 1.5 ± 0.0 |\n"
            "| llama 7B Q4_0 | 3.56 GiB | 6.74 B | CPU | 16 | 0 | tg128 @ d512 | 9.25 ± 0.10 |\n")
    a, b = parse_md(text)
    assert (a.n_prompt, a.n_gen, a.kind) == (512, 128, "pp+tg")
    assert (b.n_prompt, b.n_gen, b.kind) == (0, 128, "tg")
    assert a.model_size_bytes == int(3.56 * (1 << 30)) and a.model_n_params == 6_740_000_000


@pytest.mark.parametrize("text", ["", "not json", "{}", '[{"n_prompt": 1}]'])
def test_bad_json_raises(text):
    with pytest.raises(BenchParseError):
        parse_json(text)


@pytest.mark.parametrize("text", [
    "",
    "| a | b |\n| - | - |\n| 1 | 2 |\n",  # no test / t/s columns
    "| test | t/s |\n| - | - |\n| pp64 | fast |\n",
    "| test | t/s |\n| - | - |\n| pp64 | 1.0 ± 0.1 | extra |\n",
    "| test | t/s |\n| - | - |\n| xx | 1.0 ± 0.1 |\n",
])
def test_bad_md_raises(text):
    with pytest.raises(BenchParseError):
        parse_md(text)
