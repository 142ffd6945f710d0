"""Roofline: how close decode runs to the memory read bandwidth of the host.

Decode reads every weight once per token, so tokens/s x bytes/token <= read bandwidth.
Bandwidth comes from membw.c (next to this file): a multi-threaded sum over a buffer far larger
than the last-level cache, compiled with ``cc -O2 -pthread`` into a cache directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec

from hosttune.errors import HostError
from hosttune.host import Host

SOURCE = Path(__file__).with_name("membw.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hosttune-bench"


class Bandwidth(msgspec.Struct, frozen=True):
    bytes_read: int
    seconds: float  # best pass
    threads: int

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_read / self.seconds


def parse_membw(text: str, threads: int) -> Bandwidth:
    try:
        b, s, _ = text.split()
        return Bandwidth(int(b), float(s), threads)
    except ValueError as err:
        raise HostError(f"membw printed {text!r}, expected 'bytes seconds checksum'") from err


def build_membw(host: Host, cc: str = "cc") -> str:
    """Compile membw.c once per source version (the binary's name carries the source hash)."""
    src = SOURCE.read_bytes()
    out = cache_dir() / f"membw-{hashlib.sha256(src).hexdigest()[:12]}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        host.run([cc, "-O2", "-pthread", "-o", str(tmp), str(SOURCE)], timeout_s=120,
                 check=True)
        tmp.rename(out)
    return str(out)


def measure_bandwidth(host: Host, *, threads: int, mib: int = 1024, passes: int = 5,
                      cpus: list[int] | None = None) -> Bandwidth:
    exe = build_membw(host)
    argv = [exe, str(mib), str(threads), str(passes)]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
    res = host.run(argv, timeout_s=300, check=True)
    return parse_membw(res.stdout, threads)


class Roofline(msgspec.Struct, frozen=True):
    decode_tokens_per_s: float
    bytes_per_token: int
    bandwidth_bytes_per_s: float

    @property
    def achieved_bytes_per_s(self) -> float:
        return self.decode_tokens_per_s * self.bytes_per_token

    @property
    def fraction(self) -> float:
        """Achieved weight-read rate over the measured read bandwidth (1.0 = at the roof)."""
        return self.achieved_bytes_per_s / self.bandwidth_bytes_per_s

    @property
    def ceiling_tokens_per_s(self) -> float:
        return self.bandwidth_bytes_per_s / self.bytes_per_token

    def to_json(self) -> dict[str, float | int]:
        return {"decode_tokens_per_s": self.decode_tokens_per_s,
                "bytes_per_token": self.bytes_per_token,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
                "achieved_bytes_per_s": self.achieved_bytes_per_s,
                "fraction": self.fraction, "ceiling_tokens_per_s": self.ceiling_tokens_per_s}
