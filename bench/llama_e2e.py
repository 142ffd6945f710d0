#!/usr/bin/env python3
"""End to end, from nothing: does the huge-page store / CPU pinning help llama.cpp here?

    sudo python3 bench/llama_e2e.py [--size-mb 1000] [--rounds 6]

1. llama.cpp from the source vendored in the llama-cpp-python 0.3.36 sdist
   (pip download --no-binary :all: --no-deps), CPU only, -DGGML_NATIVE=ON, targets llama-bench and
   llama-simple, -j2; cached under ~/.cache/hosttune-bench (reruns skip the build).
2. A llama-architecture GGUF with random Q8_0 weights of --size-mb (bench/synth_gguf.py).
3. The model into a huge-page store: a private hugetlbfs mount, the 2 MiB pool raised by exactly
   the pages needed, filled with `hosttune models load`. Pool size and mount are restored in
   `finally`, under the same lock the kernel tests take (/tmp/hosttune-kernel-tests.lock).
4. `hosttune bench llama --json` (interleaved A/B, cold start, roofline), then the results and a
   description of the machine into docs/benchmarks.md (between markers) and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION = "0.3.36"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hosttune-bench"
HP = 2 * 1024 * 1024
BEGIN, END = "<!-- hosttune-bench-llama:begin -->", "<!-- hosttune-bench-llama:end -->"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(argv))
    kw.setdefault("check", True)
    return subprocess.run(argv, text=True, **kw)  # type: ignore[call-overload]


def build_llama() -> tuple[Path, Path]:
    src = CACHE / "src"
    sdist = src / f"llama_cpp_python-{VERSION}.tar.gz"
    tree = src / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    build = CACHE / "build"
    bench, simple = build / "bin" / "llama-bench", build / "bin" / "llama-simple"
    if bench.exists() and simple.exists():
        log(f"llama.cpp already built in {build}")
        return bench, simple
    src.mkdir(parents=True, exist_ok=True)
    if not sdist.exists():
        run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             f"llama-cpp-python=={VERSION}", "-d", str(src)])
    if not tree.exists():
        with tarfile.open(sdist) as tf:
            tf.extractall(src, filter="data")
    run(["cmake", "-S", str(tree), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_OPENMP=ON"],
        stdout=subprocess.DEVNULL)
    run(["cmake", "--build", str(build), "-j2", "--target", "llama-bench", "llama-simple"],
        stdout=subprocess.DEVNULL)
    return bench, simple


def ensure_deps() -> None:
    """The optional `bench` extra (gguf, numpy, matplotlib), installed when missing."""
    try:
        import gguf  # noqa: F401
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        run([sys.executable, "-m", "pip", "install", "-q", "gguf>=0.10", "numpy>=1.24",
             "matplotlib>=3.7"])


def make_model(size_mb: float) -> Path:
    path = CACHE / f"synthetic-q8_0-{int(size_mb)}mb.gguf"
    if not path.exists():
        sys.path.insert(0, str(REPO / "bench"))
        import synth_gguf

        tmp = path.with_suffix(".tmp")
        info = synth_gguf.write(str(tmp), size_mb=size_mb)
        tmp.rename(path)
        log(f"wrote {path} {info}")
    return path


@contextlib.contextmanager
def kernel_lock() -> Iterator[None]:
    fd = os.open("/tmp/hosttune-kernel-tests.lock", os.O_RDWR | os.O_CREAT, 0o600)
    log("waiting for the kernel lock")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


NR = "/proc/sys/vm/nr_hugepages"


def _read_int(p: str) -> int:
    return int(Path(p).read_text().split()[0])


@contextlib.contextmanager
def store(model: Path) -> Iterator[str]:
    """Yield the model's path in a temporary hugetlbfs store; undo everything after."""
    need = -(-model.stat().st_size // HP) + 1
    orig = _read_int(NR)
    mnt = tempfile.mkdtemp(prefix="hosttune-bench-store-")
    mounted = False
    try:
        free = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                        if ln.startswith("HugePages_Free:")))
        want = orig + max(0, need - free)
        Path(NR).write_text(f"{want}\n")
        got = _read_int(NR)
        if got < want:
            raise SystemExit(f"huge-page pool: asked {want}, kernel gave {got} (memory?)")
        run(["mount", "-t", "hugetlbfs", "-o", f"pagesize=2M,size={need * HP}", "none", mnt])
        mounted = True
        yield _load(model, mnt)
    finally:
        with contextlib.suppress(OSError):
            for p in sorted(Path(mnt).rglob("*"), reverse=True):
                p.unlink() if not p.is_dir() else p.rmdir()
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
        Path(NR).write_text(f"{orig}\n")
        log(f"restored {NR}={_read_int(NR)} (was {orig}), unmounted {mnt}")


def _load(model: Path, mnt: str) -> str:
    """`hosttune models load`: copies through a MAP_SHARED mapping (write(2) on hugetlbfs is
    EINVAL), pads to whole huge pages and verifies; returns the stored file's path."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    out = run([sys.executable, "-m", "hosttune", "models", "load", str(model), "--name",
               model.name, "--mount", mnt, "--no-checksum", "--json"], env=env,
              capture_output=True)
    path = str(json.loads(out.stdout)["model"]["path"])
    log(f"hosttune models load: {path} in {time.perf_counter() - t0:.2f} s")
    return path


def machine() -> dict[str, str]:
    info = {"kernel": platform.release(), "cpus": str(os.cpu_count())}
    for ln in Path("/proc/cpuinfo").read_text().splitlines():
        if ln.startswith("model name"):
            info["cpu"] = ln.split(":", 1)[1].strip()
            break
    for ln in Path("/proc/meminfo").read_text().splitlines():
        if ln.startswith("MemTotal:"):
            info["memory"] = f"{int(ln.split()[1]) / 1024 / 1024:.1f} GiB"
    with contextlib.suppress(OSError):
        info["virtualization"] = subprocess.run(["systemd-detect-virt"], capture_output=True,
                                                text=True, check=False).stdout.strip()
    return info


def plot(res: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(res["summaries"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, kind, title in ((axes[0], "tg", "decode (tg) tokens/s"),
                            (axes[1], "pp", "prompt (pp) tokens/s")):
        data = [[r["avg_ts"] for s in res["samples"] if s["arm"] == a for r in s["results"]
                 if (r["n_gen"] > 0) == (kind == "tg")] for a in arms]
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data, 1):
            ax.scatter([i + (j - len(d) / 2) * 0.03 for j in range(len(d))], d, s=14,
                       zorder=3)
        ax.set_xticks(range(1, len(arms) + 1), arms, rotation=15)
        ax.set_title(title)
    cold = res["cold_start"]["runs"]
    carms = list(dict.fromkeys(c["arm"] for c in cold if c["arm"] != "prime"))
    cdata = [[c["seconds"] for c in cold if c["arm"] == a] for a in carms]
    if cdata:
        axes[2].boxplot(cdata, showfliers=False)
        for i, d in enumerate(cdata, 1):
            axes[2].scatter([i] * len(d), d, s=14, zorder=3)
        axes[2].set_xticks(range(1, len(carms) + 1), carms)
    axes[2].set_title("cold start: process start to first token (s)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def markdown(res: dict, mach: dict[str, str], meta: dict[str, object], png: str) -> str:
    s = res["samples"][0]["results"][0]
    L = [BEGIN, "## llama.cpp A/B: page cache vs huge-page store, unpinned vs pinned", "",
         f"Produced by `bench/llama_e2e.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
         f" in {meta['seconds']:.0f} s (build {meta['build_seconds']:.0f} s of it).", "",
         "Machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()) + ".", "",
         f"llama.cpp from the llama-cpp-python {VERSION} sdist (vendored source), CPU, "
         f"GGML_NATIVE; model: synthetic llama GGUF, random Q8_0 weights, "
         f"{s['model_size_bytes'] / 1e6:.0f} MB of tensors, {s['model_n_params'] / 1e6:.0f} M "
         f"params. Store: `{meta['store_method']}`.", "",
         f"Each arm ran {res['config']['rounds']} times, interleaved (order rotated each round); "
         f"one sample = one `llama-bench -r {res['config']['reps']}` invocation's mean. "
         f"Threads {res['threads']}; pinned = `taskset -c "
         f"{','.join(map(str, res['cpus_pinned']))}` (one CPU per physical core, from the host "
         "topology: what the container planner gives one worker that owns the host). Example: `"
         + " ".join(res["argv_example"]) + "`.", "",
         "| arm | test | median t/s | min-max | mean 95% CI (t) |", "|---|---|---|---|---|"]
    for arm, kinds in res["summaries"].items():
        for kind, x in kinds.items():
            L.append(f"| {arm} | {kind} | {x['median']:.2f} | {x['min']:.2f}-{x['max']:.2f} | "
                     f"{x['ci95_low']:.2f}-{x['ci95_high']:.2f} |")
    L += ["", "| comparison | test | median change | 95% CI of diff (Welch) | bootstrap CI of "
          "median ratio | verdict |", "|---|---|---|---|---|---|"]
    for name, kinds in res["comparisons"].items():
        for kind, c in kinds.items():
            L.append(f"| {name} | {kind} | {c['change_pct']:+.1f}% | {c['diff_ci95'][0]:+.2f} "
                     f".. {c['diff_ci95'][1]:+.2f} t/s | {c['median_ratio_ci95'][0]:.3f}-"
                     f"{c['median_ratio_ci95'][1]:.3f} | {c['verdict']} |")
    cs = res["cold_start"]
    prompt = cs.get("prompt", "e")
    shown = f"'{prompt}'" if prompt else "'' (BOS only: one token)"
    L += ["", f"Cold start, process start to first token (`llama-simple -m MODEL -n 1 {shown}`, "
          "first bytes on its stdout, which it flushes right after the first sampled "
          "token): " + cs["note"] + ".", "",
          "| arm | median s | min-max | n |", "|---|---|---|---|"]
    for arm, x in cs["summary"].items():
        if arm != "prime":
            L.append(f"| {arm} | {x['median']:.3f} | {x['min']:.3f}-{x['max']:.3f} | {x['n']} |")
    summ = cs["summary"]
    if "store" in summ and "cold cache" in summ:
        ratio = summ["store"]["median"] / summ["cold cache"]["median"]
        L += ["", f"Store / cold page cache = **{ratio:.2f}x** (target <= 0.3x: "
              f"{'met' if ratio <= 0.3 else 'MISSED'})."]
    bw = res["bandwidth"]
    if bw:
        L += ["", f"Roofline: `membw` (hosttune/bench/membw.c, cc -O2, {bw['threads']} threads "
              f"summing a 1 GiB buffer, best of 5) reads **{bw['bytes_per_s'] / 1e9:.1f} GB/s**. "
              "Bytes per token = llama-bench's model_size (all tensors; the tiny token "
              "embedding is included).", "",
              "| arm | decode t/s | GB/s of weights | fraction of roof | roof t/s |",
              "|---|---|---|---|---|"]
        for arm, r in res["roofline"].items():
            L.append(f"| {arm} | {r['decode_tokens_per_s']:.2f} | "
                     f"{r['achieved_bytes_per_s'] / 1e9:.1f} | {r['fraction']:.0%} | "
                     f"{r['ceiling_tokens_per_s']:.1f} |")
    tg = res["comparisons"].get("store/unpinned vs cache/unpinned", {}).get("tg")
    if tg:
        L += ["", f"Decode from the store vs page cache: {tg['verdict']} "
              f"({'target met' if tg['verdict'] != 'slower' else 'target MISSED'}: not slower "
              "beyond the spread)."]
    L += ["", f"![A/B distributions]({png})", "", END]
    return "\n".join(L) + "\n"


def write_doc(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        a, rest = text.split(BEGIN, 1)
        text = a + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cold-rounds", type=int, default=5)
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "benchmarks-llama-ab.png")
    ap.add_argument("--json-out", type=Path, default=REPO / "docs" / "benchmarks-llama.json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: huge-page pool, hugetlbfs mount, drop_caches")
    t0 = time.perf_counter()
    ensure_deps()
    bench, simple = build_llama()
    build_s = time.perf_counter() - t0
    model = make_model(a.size_mb)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with kernel_lock(), store(model) as stored:
        out = run([sys.executable, "-m", "hosttune", "bench", "llama", "--model", str(model),
                   "--store", stored, "--llama-bench", str(bench), "--llama-simple", str(simple),
                   "--rounds", str(a.rounds), "--reps", str(a.reps), "--cold-rounds",
                   str(a.cold_rounds), "--json"], env=env, capture_output=True, check=False)
        if out.returncode not in (0, 1):
            raise SystemExit(f"hosttune bench failed ({out.returncode}): {out.stderr}")
    res = json.loads(out.stdout)
    a.doc.parent.mkdir(parents=True, exist_ok=True)
    a.json_out.write_text(json.dumps({"machine": machine(), **res}, indent=1) + "\n")
    plot(res, a.png)
    meta = {"seconds": time.perf_counter() - t0, "build_seconds": build_s,
            "store_method": "hosttune models load"}
    write_doc(a.doc, markdown(res, machine(), meta, os.path.relpath(a.png, a.doc.parent)))
    log(f"done in {meta['seconds']:.0f} s: {a.doc}, {a.png}, {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
