"""Parsers of llama-bench output (``-o json`` and ``-o md``), pure functions on text.

Field names follow llama.cpp tools/llama-bench/llama-bench.cpp (``test::get_fields``);
the markdown printer shows ``pp512`` / ``tg128`` and ``avg ± stddev`` tokens/s."""

from __future__ import annotations

import json
import re

import msgspec

from hosttune.errors import HosttuneError


class BenchParseError(HosttuneError):
    """llama-bench output could not be read."""


class BenchResult(msgspec.Struct, frozen=True):
    test: str  # "pp64", "tg32" (as llama-bench's markdown shows it)
    n_prompt: int
    n_gen: int
    n_threads: int
    avg_ts: float  # tokens per second, mean over the repetitions
    stddev_ts: float
    samples_ts: tuple[float, ...] = ()  # only in json output
    model_size_bytes: int | None = None  # tensor bytes (json); approximate from md's "MiB"
    model_n_params: int | None = None
    model_type: str = ""
    backend: str = ""

    @property
    def kind(self) -> str:
        """ "pp" (prompt processing), "tg" (decode) or "pp+tg"."""
        if self.n_prompt and self.n_gen:
            return "pp+tg"
        return "pp" if self.n_prompt else "tg"


def _test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    if n_prompt and n_gen:
        name = f"pp{n_prompt}+tg{n_gen}"
    else:
        name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return name + (f" @ d{n_depth}" if n_depth else "")


def parse_json(text: str) -> list[BenchResult]:
    """``llama-bench -o json``: a JSON array of one object per test."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchParseError(f"llama-bench json output is not JSON: {err}") from err
    if not isinstance(data, list):
        raise BenchParseError("llama-bench json output is not a list of tests")
    out = []
    for i, t in enumerate(data):
        try:
            npp, ntg = int(t["n_prompt"]), int(t["n_gen"])
            out.append(BenchResult(
                test=_test_name(npp, ntg, int(t.get("n_depth", 0))),
                n_prompt=npp, n_gen=ntg, n_threads=int(t["n_threads"]),
                avg_ts=float(t["avg_ts"]), stddev_ts=float(t["stddev_ts"]),
                samples_ts=tuple(float(x) for x in t.get("samples_ts", ())),
                model_size_bytes=int(t["model_size"]), model_n_params=int(t["model_n_params"]),
                model_type=str(t.get("model_type", "")), backend=str(t.get("backends", ""))))
        except (KeyError, TypeError, ValueError) as err:
            raise BenchParseError(f"llama-bench json test #{i}: missing/bad field {err}") from err
    return out


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_PARAMS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_TEST = re.compile(r"^(?:pp(\d+))?\+?(?:tg(\d+))?(?:\s*@\s*d(\d+))?$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_md(text: str) -> list[BenchResult]:
    """``llama-bench -o md`` (the default): a markdown table, header then ``| --- |`` row."""
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        raise BenchParseError("no markdown table in llama-bench output")
    head = _cells(lines[0])
    need = ("test", "t/s")
    if not all(h in head for h in need):
        raise BenchParseError(f"llama-bench table lacks columns {need}: {head}")
    col = {h: i for i, h in enumerate(head)}
    out = []
    for ln in lines[2:]:
        c = _cells(ln)
        if len(c) != len(head):
            raise BenchParseError(f"llama-bench table row has {len(c)} cells: {ln!r}")
        m = _TEST.match(c[col["test"]])
        ts = re.match(r"^([\d.]+)\s*±\s*([\d.]+)$", c[col["t/s"]])
        if not m or not ts or not (m.group(1) or m.group(2)):
            raise BenchParseError(f"llama-bench table row unreadable: {ln!r}")
        size = None
        if "size" in col:
            sm = re.match(r"^([\d.]+)\s*(B|KiB|MiB|GiB|TiB)$", c[col["size"]])
            size = int(float(sm.group(1)) * _UNITS[sm.group(2)]) if sm else None
        params = None
        if "params" in col:
            pm = re.match(r"^([\d.]+)\s*([KMBT]?)$", c[col["params"]])
            params = int(float(pm.group(1)) * _PARAMS[pm.group(2)]) if pm else None
        threads = int(c[col["threads"]]) if "threads" in col else 0
        npp, ntg = int(m.group(1) or 0), int(m.group(2) or 0)
        out.append(BenchResult(
            test=c[col["test"]], n_prompt=npp, n_gen=ntg, n_threads=threads,
            avg_ts=float(ts.group(1)), stddev_ts=float(ts.group(2)),
            model_size_bytes=size, model_n_params=params,
            model_type=c[col["model"]] if "model" in col else "",
            backend=c[col["backend"]] if "backend" in col else ""))
    return out
