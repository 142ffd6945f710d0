"""GPU telemetry through NVML (nvidia-ml-py). Lazy init once per process, NOT_SUPPORTED becomes
an explicit 'unsupported' field, never a placeholder value.

Narrow adapter: when the project's NVML gateway lands (GPU issue), ``read_gpus`` is the one
function to re-point at it."""

from __future__ import annotations

import functools
import time
from typing import Any

from hosttune.monitor.snapshot import GpuReading, GpusReading, Unavailable

COMPUTE_MODES = {0: "DEFAULT", 1: "EXCLUSIVE_THREAD", 2: "PROHIBITED", 3: "EXCLUSIVE_PROCESS"}
_inited = False
_failed: tuple[float, str] | None = None  # (monotonic time, reason) of the last failed init
RETRY_S = 60.0  # a missing driver does not appear between two scrapes: do not dlopen each time


def _init(pynvml: Any) -> None:
    global _inited
    if not _inited:
        pynvml.nvmlInit()  # command-line equivalent: any nvidia-smi call
        _inited = True


def _get(pynvml: Any, h: Any, unsupported: list[str], field: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(h, *args)
    except pynvml.NVMLError_NotSupported:
        unsupported.append(field)  # explicit 'unsupported on this GPU', not a placeholder
    except pynvml.NVMLError:
        pass
    return None


def read_gpus() -> GpusReading | Unavailable:
    try:
        import pynvml
    except ImportError:
        return Unavailable("nvidia-ml-py (pynvml) not installed")
    global _failed
    if _failed is not None and time.monotonic() - _failed[0] < RETRY_S:
        return Unavailable(_failed[1])
    try:
        _init(pynvml)
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as err:
        _failed = (time.monotonic(), f"NVML: {err}")
        return Unavailable(_failed[1])
    _failed = None
    if count == 0:
        return Unavailable("no NVIDIA GPU")
    gpus = []
    for i in range(count):
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
        except pynvml.NVMLError as err:  # e.g. GPU_IS_LOST: report it, keep the others
            gpus.append(GpuReading(i, f"gpu{i} ({err})", "", None, None, None, None, None,
                                   None))
            continue
        unsupported: list[str] = []
        get = functools.partial(_get, pynvml, h, unsupported)

        name = get("name", pynvml.nvmlDeviceGetName) or f"gpu{i}"
        uuid = get("uuid", pynvml.nvmlDeviceGetUUID) or ""
        power_mw = get("power", pynvml.nvmlDeviceGetPowerUsage)  # nvidia-smi -q -d POWER
        limit_mw = get("power_limit", pynvml.nvmlDeviceGetEnforcedPowerLimit)
        sm = get("sm_clock", pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM)
        mem = get("mem_clock", pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_MEM)
        mode = get("compute_mode", pynvml.nvmlDeviceGetComputeMode)
        pers = get("persistence", pynvml.nvmlDeviceGetPersistenceMode)
        gpus.append(GpuReading(
            i, name.decode() if isinstance(name, bytes) else str(name),
            uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            power_mw / 1000.0 if power_mw is not None else None,
            limit_mw / 1000.0 if limit_mw is not None else None,
            sm * 1_000_000 if sm is not None else None,
            mem * 1_000_000 if mem is not None else None,
            COMPUTE_MODES.get(mode, str(mode)) if mode is not None else None,
            bool(pers) if pers is not None else None, tuple(unsupported)))
    return GpusReading(tuple(gpus))
