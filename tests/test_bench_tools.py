"""Cold-start timing, the membw roofline kernel, the A/B runner's interleaving and pinning,
and `hosttune bench` refusals - on small stand-in programs (the real llama.cpp runs live in
bench/llama_e2e.py; the stand-in llama-bench prints output captured from the real one)."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from hosttune.bench import coldstart, llama, roofline
from hosttune.errors import HostError, NeedsRootError
from hosttune.host import Host
from tests.conftest import run_cli

DATA = Path(__file__).parent / "data" / "llama_bench"


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_first_token_is_the_first_stdout_bytes(tmp_path):
    # like llama-simple: loads (sleep), flushes the first token, then tears down (sleep)
    exe = _script(tmp_path / "simple", "sleep 0.3; printf tok; sleep 0.7; echo done >&2\n")
    r = coldstart.time_first_token(Host("/"), exe, "m.gguf", arm="x")
    assert r.first_token_seen
    assert 0.25 < r.seconds < 0.9 < r.exit_seconds


def test_no_token_printed_falls_back_to_exit_time(tmp_path):
    exe = _script(tmp_path / "simple", "sleep 0.2\n")
    r = coldstart.time_first_token(Host("/"), exe, "m.gguf")
    assert not r.first_token_seen and r.seconds == r.exit_seconds


def test_failing_cli_reports_stderr(tmp_path):
    exe = _script(tmp_path / "simple", "echo 'unable to load model' >&2; exit 1\n")
    with pytest.raises(HostError, match="unable to load model"):
        coldstart.time_first_token(Host("/"), exe, "m.gguf")


def test_offline_host_never_runs_or_drops(tmp_path):
    h = Host(tmp_path)
    with pytest.raises(HostError):
        coldstart.drop_caches(h)
    with pytest.raises(HostError):
        coldstart.time_first_token(h, "/bin/true", "m")


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the non-root refusal")
def test_drop_caches_needs_root():
    with pytest.raises(NeedsRootError):
        coldstart.drop_caches(Host("/"))


def test_membw_builds_and_measures(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bw = roofline.measure_bandwidth(Host("/"), threads=2, mib=64, passes=2)
    assert bw.bytes_read == 64 << 20 and bw.threads == 2
    assert 1e8 < bw.bytes_per_s < 1e13  # 0.1 GB/s .. 10 TB/s
    assert list(tmp_path.glob("hosttune-bench/membw-*"))  # cached binary


def test_parse_membw_and_roofline_math():
    bw = roofline.parse_membw("1073741824 0.050000000 123\n", 2)
    assert bw.bytes_per_s == pytest.approx(1073741824 / 0.05)
    r = roofline.Roofline(30.0, 1_000_000_000, 40e9)
    assert r.achieved_bytes_per_s == 30e9
    assert r.fraction == pytest.approx(0.75)
    assert r.ceiling_tokens_per_s == pytest.approx(40.0)
    with pytest.raises(HostError):
        roofline.parse_membw("garbage", 1)


def _fake_bench(tmp_path: Path) -> tuple[str, Path]:
    """A llama-bench stand-in: logs its argv, prints the captured real json output."""
    src = DATA / "tg_pp.json"
    logf = tmp_path / "argv.log"
    exe = _script(tmp_path / "llama-bench",
                  f'echo "$@" >> {logf}\ncat {src}\n')
    return exe, logf


def test_ab_rounds_are_interleaved_and_rotated(tmp_path):
    exe, logf = _fake_bench(tmp_path)
    arms = [llama.Arm("A", "/m/a.gguf"), llama.Arm("B", "/m/b.gguf")]
    res = llama.run_ab(Host("/"), exe, arms, rounds=3, threads=2, n_prompt=64, n_gen=32,
                       reps=2, pairs=[("A", "B")])
    assert [s.arm for s in res.samples] == ["A", "B", "B", "A", "A", "B"]
    lines = logf.read_text().splitlines()
    assert lines[0] == "-m /m/a.gguf -t 2 -p 64 -n 32 -r 2 -o json"
    assert set(res.summaries["A"]) == {"pp", "tg"}
    # identical captured output on both arms: no verdict
    assert res.comparisons["B vs A"]["tg"].verdict == "no difference beyond the spread"
    captured = json.loads((DATA / "tg_pp.json").read_text())
    tg = next(t for t in captured if t["n_gen"] > 0)
    assert res.summaries["A"]["tg"].median == pytest.approx(tg["avg_ts"])


def test_pinned_arm_runs_under_taskset(tmp_path):
    exe, _ = _fake_bench(tmp_path)
    argv = llama.bench_argv(exe, llama.Arm("p", "/m.gguf", (0, 2)), threads=2, n_prompt=8,
                            n_gen=4, reps=1)
    assert argv[:3] == ["taskset", "-c", "0,2"] and argv[3] == exe
    if shutil.which("taskset"):
        res = llama.run_ab(Host("/"), exe, [llama.Arm("p", "/m.gguf", (0,))], rounds=1,
                           threads=1)
        assert res.samples[0].results


def test_pinned_cpus_one_per_physical_core(epyc):
    h = Host(epyc)
    cores = h.facts.physical_cores
    assert any(len(c) == 2 for c in cores)  # the fake EPYC has SMT: siblings are left out
    cpus = llama.pinned_cpus(h)
    assert cpus == tuple(core[0] for core in cores)
    assert len(set(cpus)) == len(cpus) == len(cores)


def test_cli_refuses_root_mode_and_missing_binary(tmp_path):
    r = run_cli("bench", "llama", "--model", "m.gguf", "--root", str(tmp_path))
    assert r.returncode == 2 and "--root" in r.stderr
    r = run_cli("bench", "llama", "--model", "m.gguf", "--llama-bench", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_warm_program_reads_the_binary_and_its_libraries():
    paths = coldstart.warm_program(Host("/"), "/bin/ls")
    assert paths[0] == "/bin/ls"
    assert any("libc.so" in p for p in paths)


def test_drop_caches_as_root(kernel_lock):
    from tests.conftest import need

    need(os.geteuid() == 0, "dropping the page cache needs root")
    # write-only file (mode 0200): nothing to read back; a failed write raises
    cached = _cached_kb()
    coldstart.drop_caches(Host("/"))
    assert _cached_kb() <= cached + 64 * 1024  # not grown (other jobs may add a little)


def _cached_kb() -> int:
    for ln in Path("/proc/meminfo").read_text().splitlines():
        if ln.startswith("Cached:"):
            return int(ln.split()[1])
    raise AssertionError("no Cached: in /proc/meminfo")


def _fake_simple(tmp_path: Path, *, empty_ok: bool) -> tuple[str, Path]:
    """A llama-simple stand-in: logs its prompt (the last argument); with ``empty_ok`` False it
    fails on the empty prompt the way llama-simple does for a vocabulary without BOS."""
    logf = tmp_path / "simple.log"
    refuse = "" if empty_ok else \
        'if [ -z "$last" ]; then echo "main: error: unable to tokenize prompt" >&2; exit 1; fi\n'
    exe = _script(tmp_path / "llama-simple",
                  'for a in "$@"; do last="$a"; done\n'
                  f'echo "[$last]" >> {logf}\n' + refuse + "printf tok\n")
    return exe, logf


@pytest.mark.parametrize("empty_ok", [True, False])
def test_cold_start_prompt_is_bos_only_with_a_fallback(tmp_path, monkeypatch, empty_ok):
    from hosttune.bench import report

    bench, _ = _fake_bench(tmp_path)
    simple, logf = _fake_simple(tmp_path, empty_ok=empty_ok)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    # not root: no page-cache drop in a unit test (the warm arm alone is timed)
    monkeypatch.setattr(Host, "is_root", property(lambda self: False))
    cfg = report.BenchConfig(str(model), bench, llama_simple=simple, rounds=1, reps=1,
                             pinning=False, cold_rounds=2, roofline=False)
    rep = report.run_bench(Host("/"), cfg)
    prompts = logf.read_text().splitlines()
    if empty_ok:
        assert rep.cold_prompt == "" and prompts == ["[]"] * 3  # prime + 2 rounds
        assert "empty prompt failed" not in rep.cold_note
    else:
        assert rep.cold_prompt == coldstart.FALLBACK_PROMPT
        assert prompts == ["[]", "[e]", "[e]", "[e]"]
        assert "unable to tokenize prompt" in rep.cold_note
    assert [c.arm for c in rep.cold] == ["warm cache"] * 2
    assert all(c.first_token_seen for c in rep.cold)
    assert rep.to_json()["cold_start"]["prompt"] == rep.cold_prompt
