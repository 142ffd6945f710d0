"""Cold start: process start to the first generated token.

Measured with llama.cpp's ``llama-simple -m MODEL -n 1 e``: it loads the model (mmap),
decodes the prompt, samples one token, prints it and flushes stdout (examples/simple/simple.cpp)
- the first bytes on its stdout mark the first token. If the token is end-of-generation nothing
is printed; then process exit is used (and said in ``first_token_seen``).

The prompt is empty, so llama-simple decodes the BOS token alone: what is timed is getting the
weights ready plus one single-token forward pass (the work of one generated token), not prompt
compute. Prompt compute is the same in every arm and only dilutes the difference: on a 1 GB
Q8_0 model with 2 vCPUs a one-letter prompt (3 tokens) costs ~0.15 s, the BOS alone ~0.05 s,
and a 13-token prompt ~0.35 s. A vocabulary without BOS makes the empty prompt zero tokens,
which llama-simple refuses; then one letter is used (``FALLBACK_PROMPT``) and the report says so.

Arms: "store" (model on hugetlbfs, page cache dropped first: the store survives it),
"cold cache" (page cache dropped, model read from disk), "warm cache" (model already cached).
Dropping the page cache (``echo 3 > /proc/sys/vm/drop_caches``) needs root; without it the
cold arms are not run and the result says so. After a drop, the llama-simple binary and its
shared libraries are read back (``warm_program``) so that only the model's residency differs
between the arms."""

from __future__ import annotations

import os
import select
import subprocess
import time

import msgspec

from hosttune.errors import HostError, NeedsRootError
from hosttune.host import Host


class ColdStart(msgspec.Struct, frozen=True):
    arm: str
    seconds: float  # process start to first token
    first_token_seen: bool
    exit_seconds: float


def drop_caches(host: Host) -> None:
    """Write back dirty pages, then drop clean page cache, dentries and inodes. Global: it
    slows every process on the host for a while. Huge-page (hugetlbfs) files are not cache
    and stay."""
    if host.offline:
        raise HostError("cold start measures the live host; it does not work with --root")
    if not host.is_root:
        raise NeedsRootError("dropping the page cache needs root (/proc/sys/vm/drop_caches)")
    os.sync()
    host.write_kernel("/proc/sys/vm/drop_caches", "3")


PROMPT = ""  # BOS only
FALLBACK_PROMPT = "e"


def warm_program(host: Host, exe: str) -> list[str]:
    """Read ``exe`` and the shared libraries ``ldd`` lists back into the page cache."""
    res = host.run(["ldd", exe], timeout_s=30)
    paths = [os.path.abspath(exe)]  # a command-line path (bench runs on the live system only)
    for ln in res.stdout.splitlines():
        parts = ln.split()
        # "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        cand = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0] if parts else ""
        if cand.startswith("/") and host.is_file(cand):
            paths.append(cand)
    for p in paths:
        # no size cap: CUDA libraries are hundreds of MiB, and only the page cache keeps them
        with host.open_read(p, limit=1 << 62) as f:
            while f.read(1 << 20):
                pass
    return paths


def time_first_token(host: Host, llama_simple: str, model: str, *, prompt: str = PROMPT,
                     arm: str = "", timeout_s: float = 300.0) -> ColdStart:
    """One timed run. subprocess directly (not Host.run): the timing needs the stdout stream."""
    if host.offline:
        raise HostError("cold start measures the live host; it does not work with --root")
    argv = [llama_simple, "-m", model, "-n", "1", prompt]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first: float | None = None
    err_chunks: list[bytes] = []
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    open_fds = {out_fd, err_fd}
    deadline = t0 + timeout_s
    while open_fds:
        left = deadline - time.perf_counter()
        if left <= 0:
            proc.kill()
            proc.wait()
            raise HostError(f"{llama_simple} did not finish within {timeout_s:g} s")
        ready, _, _ = select.select(list(open_fds), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif fd == out_fd and first is None:
                first = time.perf_counter() - t0
            elif fd == err_fd:
                err_chunks.append(chunk)
    rc = proc.wait()
    end = time.perf_counter() - t0
    if rc != 0:
        tail = b"".join(err_chunks)[-400:].decode(errors="replace")
        raise HostError(f"{llama_simple} failed (exit {rc}): {tail}")
    return ColdStart(arm, first if first is not None else end, first is not None, end)
