"""GPU telemetry through the project's NVML gateway (:mod:`hosttune.host.gpu.nvml`): the gateway
owns pynvml (lazy import, one nvmlInit, the one error mapping); this module only turns its
readings into :class:`GpuReading` values. NOT_SUPPORTED becomes an explicit 'unsupported' field,
never a placeholder value; a lost GPU keeps the others readable."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hosttune.errors import HostError
from hosttune.host.gpu.nvml import GpuInfo, Nvml, NvmlState, Reading
from hosttune.monitor.snapshot import GpuReading, GpusReading, Unavailable

if TYPE_CHECKING:
    from hosttune.host import Host

# Label values of hosttune_gpu_compute_mode (nvidia-smi -c names; NVML values 0..3).
COMPUTE_MODES = {0: "DEFAULT", 1: "EXCLUSIVE_THREAD", 2: "PROHIBITED", 3: "EXCLUSIVE_PROCESS"}
RETRY_S = 60.0  # a missing driver does not appear between two scrapes: do not dlopen each time
OFFLINE = "GPU telemetry is live only (not read under --root)"


def _lost(g: GpuInfo, msg: str) -> GpuReading:
    return GpuReading(g.index, f"{g.name} ({msg})", g.uuid, None, None, None, None, None, None)


def gpu_reading(nv: Nvml, g: GpuInfo) -> GpuReading:
    unsupported: list[str] = []
    lost: list[str] = []

    def take(field: str, r: Reading[Any]) -> Any:
        if r.ok:
            return r.value
        if r.state is NvmlState.UNSUPPORTED:
            unsupported.append(field)  # explicit 'unsupported on this GPU', not a placeholder
        elif r.state is NvmlState.GPU_LOST:
            lost.append(r.message)
        return None

    power = take("power", nv.power_usage_w(g))  # nvidia-smi -q -d POWER
    limit = take("power_limit", nv.enforced_power_limit_w(g))
    sm = take("sm_clock", nv.clock_mhz(g, "sm"))
    mem = take("mem_clock", nv.clock_mhz(g, "memory"))
    try:
        mode = take("compute_mode", nv.compute_mode(g))
    except HostError:  # a mode the gateway has no name for (EXCLUSIVE_THREAD, pre-CUDA 8)
        mode = None
    pers = take("persistence", nv.persistence_mode(g))
    if lost:
        return _lost(g, lost[0])
    return GpuReading(g.index, g.name, g.uuid, power, limit,
                      sm * 1_000_000 if sm is not None else None,
                      mem * 1_000_000 if mem is not None else None,
                      mode.smi if mode is not None else None, pers, tuple(unsupported))


def read_gpus(host: Host, nv: Nvml | None = None) -> GpusReading | Unavailable:
    """One reading of every GPU through ``nv`` (default: the host's gateway)."""
    nv = nv if nv is not None else host.nvml()
    state, msg = nv.state
    if state is not NvmlState.OK:
        # --root: the gateway never touches the live driver for a tree (OFFLINE, or no driver
        # in the tree); the values shown here are live-only either way.
        return Unavailable(OFFLINE if host.offline else msg)
    gpus = {g.index: gpu_reading(nv, g) for g in nv.devices()}
    for i, (_st, why) in nv.unreadable_devices().items():  # e.g. lost before enumeration
        gpus[i] = GpuReading(i, f"gpu{i} ({why})", "", None, None, None, None, None, None)
    if not gpus:
        return Unavailable("no NVIDIA GPU")
    return GpusReading(tuple(gpus[i] for i in sorted(gpus)))


class GatewaySource:
    """The monitor's GPU source: one gateway per Monitor (the host's), so a working NVML is not
    re-initialised on every scrape, while a failed nvmlInit (kept by the gateway for its
    lifetime) is retried with a fresh gateway once RETRY_S has passed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._nv: Nvml | None = None
        self._failed_at: float | None = None

    def __call__(self, host: Host) -> GpusReading | Unavailable:
        if self._nv is None:
            self._nv = host.nvml()
        elif self._failed_at is not None and self.clock() - self._failed_at >= RETRY_S:
            self._nv = host.nvml(renew=True)
            self._failed_at = None
        # A tree does not grow a driver: retry only on the live host.
        if self._failed_at is None and not host.offline and not self._nv.available:
            self._failed_at = self.clock()
        return read_gpus(host, self._nv)
