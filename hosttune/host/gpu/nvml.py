"""The NVML gateway: the one place hosttune talks to the NVIDIA driver (nvidia-ml-py, module
``pynvml``).

- Lazy: nothing is loaded until the first reading; one ``nvmlInit`` per gateway.
- One place maps pynvml errors (:func:`map_error`): NOT_SUPPORTED becomes an explicit
  "unsupported on this GPU" state, NO_PERMISSION "needs root", LIBRARY_NOT_FOUND /
  DRIVER_NOT_LOADED "no NVIDIA driver". Getters never raise for NVML errors: they return a
  :class:`Reading` carrying the value or the state. Setters raise the project's exceptions.
- Units in names; conversions happen here, at the edge: NVML speaks milliwatts, the gateway
  watts; memory in bytes; clocks in MHz (what NVML, nvidia-smi and the profile use);
  temperatures in degrees Celsius.
- Every method names its command-line equivalent (nvidia-smi ...).

The backend is the ``pynvml`` module itself or an object with the same functions (the fake in
:mod:`hosttune.host.gpu.fake`). Under ``--root DIR`` the live driver is never touched: a tree is
not a GPU. The gateway then lists the GPUs the tree's /proc/driver/nvidia describes and reports
their NVML state as offline, or "no NVIDIA driver" when the tree has none.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from hosttune.errors import HostError, NeedsRootError

if TYPE_CHECKING:
    from hosttune.host import Host

T = TypeVar("T")

FAKE_ENV = "HOSTTUNE_FAKE_NVML"  # e.g. "rtx5090", "h100,h100", "no-driver" (tests, demos)

# nvml.h values (a stable ABI). Literal here so that importing hosttune does not import
# pynvml (~30 ms of every audit); tests check them against pynvml.
NVML_FEATURE_DISABLED, NVML_FEATURE_ENABLED = 0, 1
NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_CLOCK_VIDEO = 0, 1, 2, 3
NVML_CLOCK_ID_APP_CLOCK_DEFAULT = 2
NVML_TEMPERATURE_GPU = 0
NVML_COMPUTEMODE_DEFAULT, NVML_COMPUTEMODE_PROHIBITED, NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 0, 2, 3
BRANDS = {0: "unknown", 1: "quadro", 2: "tesla", 3: "nvs", 4: "grid", 5: "geforce", 6: "titan",
          7: "nvidia_vapps", 8: "nvidia_vpc", 9: "nvidia_vcs", 10: "nvidia_vws",
          11: "nvidia_cloud_gaming", 12: "quadro_rtx", 13: "nvidia_rtx", 14: "nvidia",
          15: "geforce_rtx", 16: "titan_rtx", 17: "nvidia_dla", 18: "nvidia_vgamedev",
          19: "nvidia_npu"}
ARCHS = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere",
         8: "ada", 9: "hopper", 10: "blackwell", 11: "dla", 12: "dla2", 13: "rubin",
         15: "npu3", 0xFFFFFFFF: "unknown"}


def _pynvml() -> Any:
    import pynvml

    return pynvml


class NvmlState(StrEnum):
    OK = "ok"
    UNSUPPORTED = "unsupported on this GPU"
    NEEDS_ROOT = "needs root"
    NO_DRIVER = "no NVIDIA driver"
    OFFLINE = "offline"  # --root tree: NVML state is not part of a filesystem tree
    GPU_LOST = "GPU lost"
    ERROR = "error"


class NvmlUnsupportedError(HostError):
    """The GPU refused a setting with NVML_ERROR_NOT_SUPPORTED: report it, do not fail."""


class Reading(msgspec.Struct, Generic[T], frozen=True):
    """A value read through NVML, or why there is none."""

    value: T | None = None
    state: NvmlState = NvmlState.OK
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.state is NvmlState.OK and self.value is not None

    def get(self) -> T:
        if self.value is None:
            raise HostError(self.message or str(self.state))
        return self.value


def map_error(err: BaseException) -> tuple[NvmlState, str]:
    """The single mapping from pynvml exceptions to gateway states."""
    pynvml = _pynvml()
    if isinstance(err, pynvml.NVMLError_NotSupported):
        return NvmlState.UNSUPPORTED, "unsupported on this GPU (NVML_ERROR_NOT_SUPPORTED)"
    if isinstance(err, pynvml.NVMLError_NoPermission):
        return NvmlState.NEEDS_ROOT, "needs root (NVML_ERROR_NO_PERMISSION)"
    if isinstance(err, pynvml.NVMLError_LibraryNotFound):
        return NvmlState.NO_DRIVER, "no NVIDIA driver (libnvidia-ml.so.1 not found)"
    if isinstance(err, pynvml.NVMLError_DriverNotLoaded):
        return NvmlState.NO_DRIVER, "no NVIDIA driver (the nvidia kernel module is not loaded)"
    if isinstance(err, pynvml.NVMLError_LibRmVersionMismatch):
        # After a driver upgrade without reboot the old kernel module stays loaded.
        return NvmlState.NO_DRIVER, ("no usable NVIDIA driver: NVML and kernel module versions "
                                     "differ (reboot after the driver upgrade)")
    if isinstance(err, pynvml.NVMLError_GpuIsLost):
        return NvmlState.GPU_LOST, "the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)"
    if isinstance(err, pynvml.NVMLError_FunctionNotFound):
        return NvmlState.UNSUPPORTED, "this driver's NVML lacks the function"
    if isinstance(err, pynvml.NVMLError):
        return NvmlState.ERROR, f"NVML error: {err}"
    return NvmlState.ERROR, f"NVML error: {err}"


class ComputeMode(StrEnum):
    """nvidia-smi -c names. EXCLUSIVE_THREAD was removed by NVIDIA (CUDA 8+)."""

    DEFAULT = "default"
    EXCLUSIVE_PROCESS = "exclusive_process"
    PROHIBITED = "prohibited"

    @property
    def nvml(self) -> int:
        return {"default": NVML_COMPUTEMODE_DEFAULT,
                "exclusive_process": NVML_COMPUTEMODE_EXCLUSIVE_PROCESS,
                "prohibited": NVML_COMPUTEMODE_PROHIBITED}[self.value]

    @property
    def smi(self) -> str:
        return self.value.upper()

    @classmethod
    def from_nvml(cls, v: int) -> ComputeMode:
        for m in cls:
            if m.nvml == v:
                return m
        raise HostError(f"unknown NVML compute mode {v}")


# Clock event ("throttle") reasons, bit -> name (nvml.h nvmlClocksEventReason*).
EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),  # also set while clocks are locked
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)


def decode_event_reasons(mask: int) -> list[str]:
    names = [name for bit, name in EVENT_REASONS if mask & bit]
    rest = mask & ~sum(bit for bit, _ in EVENT_REASONS)
    if rest:
        names.append(f"0x{rest:x}")
    return names


class GpuInfo(msgspec.Struct, frozen=True):
    index: int
    uuid: str
    name: str
    brand: str = "unknown"
    architecture: str = "unknown"
    pci_bus_id: str = ""

    @property
    def geforce(self) -> bool:
        return self.brand in ("geforce", "titan", "geforce_rtx", "titan_rtx")

    def arch_at_least(self, name: str) -> bool:
        """Is this GPU of architecture ``name`` or newer? Unknown architectures pass: the
        driver answers NOT_SUPPORTED if it cannot."""
        order = ["kepler", "maxwell", "pascal", "volta", "turing", "ampere", "ada", "hopper",
                 "blackwell", "rubin"]
        if self.architecture not in order:
            return True
        return order.index(self.architecture) >= order.index(name)


class PcieLink(msgspec.Struct, frozen=True):
    gen: int
    max_gen: int
    width: int
    max_width: int
    gpu_max_gen: int | None = None  # what the GPU itself can do (the slot may cap max_gen)


class MemoryInfo(msgspec.Struct, frozen=True):
    total_bytes: int
    used_bytes: int
    free_bytes: int


class DriverInfo(msgspec.Struct, frozen=True):
    driver_version: str
    nvml_version: str
    cuda_driver_version: int | None
    gpu_count: int


class Nvml:
    """Gateway over a pynvml-like backend. ``unavailable`` short-circuits every reading (no
    driver, or a --root tree)."""

    def __init__(self, lib: Any | None, *, unavailable: tuple[NvmlState, str] | None = None,
                 tree_gpus: list[GpuInfo] | None = None) -> None:
        self._lib = lib
        self._init_state: tuple[NvmlState, str] | None = unavailable
        self._initialised = unavailable is not None
        self._tree_gpus = tree_gpus or []
        self._handles: dict[str, Any] = {}
        self._devices: list[GpuInfo] | None = None
        self._unreadable: dict[int, tuple[NvmlState, str]] = {}
        # the exporter reads GPUs from its scrape thread while its audit thread runs: NVML is
        # thread-safe, this object's lazy init and device list are made so by the lock
        self._lock = threading.RLock()

    # -- plumbing ------------------------------------------------------------------------------
    def _init(self) -> tuple[NvmlState, str] | None:
        if not self._initialised:
            with self._lock:
                if not self._initialised:
                    state: tuple[NvmlState, str] | None = None
                    if self._lib is None:
                        state = (NvmlState.NO_DRIVER, "no NVIDIA driver")
                    else:
                        try:
                            self._lib.nvmlInit()
                        except Exception as err:  # pynvml.NVMLError, or OSError from ctypes
                            state = map_error(err)
                    self._init_state = state
                    # last: another thread reads no state before nvmlInit has returned
                    self._initialised = True
        return self._init_state

    @property
    def state(self) -> tuple[NvmlState, str]:
        """(OK, '') when the driver answers, else why not."""
        return self._init() or (NvmlState.OK, "")

    @property
    def available(self) -> bool:
        return self._init() is None

    def _read(self, fn: str, *args: Any, convert: Callable[[Any], T]) -> Reading[T]:
        bad = self._init()
        if bad is not None:
            return Reading(None, bad[0], bad[1])
        try:
            raw = getattr(self._lib, fn)(*args)
        except _pynvml().NVMLError as err:
            st, msg = map_error(err)
            return Reading(None, st, msg)
        return Reading(convert(raw))

    def _raw(self, fn: str, *args: Any) -> Reading[Any]:
        return self._read(fn, *args, convert=_identity)

    def _set(self, what: str, fn: str, *args: Any) -> None:
        bad = self._init()
        if bad is not None:
            raise HostError(f"{what}: {bad[1]}")
        try:
            getattr(self._lib, fn)(*args)
        except _pynvml().NVMLError as err:
            st, msg = map_error(err)
            if st is NvmlState.UNSUPPORTED:
                raise NvmlUnsupportedError(f"{what}: {msg}") from err
            if st is NvmlState.NEEDS_ROOT:
                raise NeedsRootError(f"{what}: {msg}") from err
            raise HostError(f"{what}: {msg}") from err

    def handle(self, gpu: GpuInfo | str) -> Any:
        uuid = gpu if isinstance(gpu, str) else gpu.uuid
        if uuid not in self._handles:
            self.devices()
        try:
            return self._handles[uuid]
        except KeyError as err:
            raise HostError(f"no GPU with UUID {uuid} on this host") from err

    # -- system ----------------------------------------------------------------------------------
    def driver(self) -> Reading[DriverInfo]:
        """nvidia-smi --query-gpu=driver_version,count --format=csv"""
        bad = self._init()
        if bad is not None:
            return Reading(None, bad[0], bad[1])
        ver = self._raw("nvmlSystemGetDriverVersion")
        nv = self._raw("nvmlSystemGetNVMLVersion")
        cuda = self._raw("nvmlSystemGetCudaDriverVersion")
        count = self._raw("nvmlDeviceGetCount")
        if not count.ok:
            return Reading(None, count.state, count.message)
        return Reading(DriverInfo(str(ver.value or "?"), str(nv.value or "?"),
                                  int(cuda.get()) if cuda.ok else None, int(count.get())))

    def devices(self) -> list[GpuInfo]:
        """nvidia-smi -L"""
        if self._devices is not None:
            return self._devices
        with self._lock:
            if self._devices is None:
                self._devices = self._list_devices()
            return self._devices

    def _list_devices(self) -> list[GpuInfo]:
        bad = self._init()
        if bad is not None:
            return list(self._tree_gpus) if bad[0] is NvmlState.OFFLINE else []
        out: list[GpuInfo] = []
        count = self._raw("nvmlDeviceGetCount")
        for i in range(int(count.value or 0)):
            h = self._raw("nvmlDeviceGetHandleByIndex", i)
            if not h.ok:
                self._unreadable[i] = (h.state, h.message)
                continue
            uuid = str(self._raw("nvmlDeviceGetUUID", h.value).value or f"index-{i}")
            name = str(self._raw("nvmlDeviceGetName", h.value).value or "?")
            brand = self._raw("nvmlDeviceGetBrand", h.value)
            arch = self._raw("nvmlDeviceGetArchitecture", h.value)
            pci = self._raw("nvmlDeviceGetPciInfo", h.value)
            bus = ""
            if pci.ok:
                raw = pci.get().busId
                bus = raw.decode() if isinstance(raw, bytes) else str(raw)
            self._handles[uuid] = h.value
            out.append(GpuInfo(i, uuid, name,
                               BRANDS.get(int(brand.get()), "unknown") if brand.ok else "unknown",
                               ARCHS.get(int(arch.get()), "unknown") if arch.ok else "unknown",
                               bus))
        return out

    def unreadable_devices(self) -> dict[int, tuple[NvmlState, str]]:
        """NVML indices counted but left out of :meth:`devices` because their handle was
        refused (e.g. GPU_IS_LOST), with why. nvidia-smi -L: "Unable to determine the device
        handle for GPU ...: GPU is lost"."""
        self.devices()
        return dict(self._unreadable)

    # -- readings (all per GPU) ------------------------------------------------------------------
    def persistence_mode(self, gpu: GpuInfo) -> Reading[bool]:
        """nvidia-smi -i N --query-gpu=persistence_mode --format=csv"""
        return self._dev("nvmlDeviceGetPersistenceMode", gpu,
                         convert=lambda v: v == NVML_FEATURE_ENABLED)

    def power_usage_w(self, gpu: GpuInfo) -> Reading[float]:
        """nvidia-smi -i N --query-gpu=power.draw --format=csv (NVML: mW)"""
        return self._dev("nvmlDeviceGetPowerUsage", gpu, convert=_mw_to_w)

    def power_limit_w(self, gpu: GpuInfo) -> Reading[float]:
        """nvidia-smi -i N --query-gpu=power.limit --format=csv (NVML: mW)"""
        return self._dev("nvmlDeviceGetPowerManagementLimit", gpu, convert=_mw_to_w)

    def enforced_power_limit_w(self, gpu: GpuInfo) -> Reading[float]:
        """nvidia-smi -i N --query-gpu=enforced.power.limit --format=csv (NVML: mW)"""
        return self._dev("nvmlDeviceGetEnforcedPowerLimit", gpu, convert=_mw_to_w)

    def default_power_limit_w(self, gpu: GpuInfo) -> Reading[float]:
        """nvidia-smi -i N --query-gpu=power.default_limit --format=csv (NVML: mW)"""
        return self._dev("nvmlDeviceGetPowerManagementDefaultLimit", gpu, convert=_mw_to_w)

    def power_limit_constraints_w(self, gpu: GpuInfo) -> Reading[tuple[float, float]]:
        """nvidia-smi -i N --query-gpu=power.min_limit,power.max_limit --format=csv
        (NVML: [min mW, max mW])"""
        return self._dev("nvmlDeviceGetPowerManagementLimitConstraints", gpu,
                         convert=lambda v: (_mw_to_w(v[0]), _mw_to_w(v[1])))

    def clock_mhz(self, gpu: GpuInfo, kind: str) -> Reading[int]:
        """nvidia-smi -i N --query-gpu=clocks.gr,clocks.sm,clocks.mem --format=csv
        (kind: graphics | sm | memory | video)"""
        return self._dev("nvmlDeviceGetClockInfo", gpu, _clock_type(kind), convert=int)

    def max_clock_mhz(self, gpu: GpuInfo, kind: str) -> Reading[int]:
        """nvidia-smi -i N --query-gpu=clocks.max.gr,clocks.max.mem --format=csv"""
        return self._dev("nvmlDeviceGetMaxClockInfo", gpu, _clock_type(kind), convert=int)

    def rated_boost_clock_mhz(self, gpu: GpuInfo) -> Reading[int]:
        """The rated ("customer boost") graphics clock, else the default applications clock.
        nvidia-smi -q -d CLOCK: "Max Customer Boost Clocks" / "Default Applications Clocks".
        GeForce boards report N/A for both."""
        r = self._dev("nvmlDeviceGetMaxCustomerBoostClock", gpu, NVML_CLOCK_GRAPHICS,
                      convert=int)
        if r.ok or r.state not in (NvmlState.UNSUPPORTED,):
            return r
        return self._dev("nvmlDeviceGetClock", gpu, NVML_CLOCK_GRAPHICS,
                         NVML_CLOCK_ID_APP_CLOCK_DEFAULT, convert=int)

    def supported_memory_clocks_mhz(self, gpu: GpuInfo) -> Reading[list[int]]:
        """nvidia-smi -i N -q -d SUPPORTED_CLOCKS (memory entries), highest first"""
        return self._dev("nvmlDeviceGetSupportedMemoryClocks", gpu,
                         convert=lambda v: sorted((int(x) for x in v), reverse=True))

    def supported_graphics_clocks_mhz(self, gpu: GpuInfo, memory_mhz: int
                                      ) -> Reading[list[int]]:
        """nvidia-smi -i N -q -d SUPPORTED_CLOCKS (graphics clocks under one memory clock),
        highest first"""
        return self._dev("nvmlDeviceGetSupportedGraphicsClocks", gpu, memory_mhz,
                         convert=lambda v: sorted((int(x) for x in v), reverse=True))

    def compute_mode(self, gpu: GpuInfo) -> Reading[ComputeMode]:
        """nvidia-smi -i N --query-gpu=compute_mode --format=csv"""
        return self._dev("nvmlDeviceGetComputeMode", gpu, convert=ComputeMode.from_nvml)

    def pcie_link(self, gpu: GpuInfo) -> Reading[PcieLink]:
        """nvidia-smi -i N --query-gpu=pcie.link.gen.current,pcie.link.gen.max,
        pcie.link.width.current,pcie.link.width.max --format=csv"""
        parts = [self._dev(fn, gpu, convert=int) for fn in (
            "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkGeneration",
            "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetMaxPcieLinkWidth")]
        for p in parts:
            if not p.ok:
                return Reading(None, p.state, p.message)
        gpu_max = self._dev("nvmlDeviceGetGpuMaxPcieLinkGeneration", gpu, convert=int)
        g, mg, w, mw = (int(p.get()) for p in parts)
        return Reading(PcieLink(g, mg, w, mw, gpu_max.value if gpu_max.ok else None))

    def memory(self, gpu: GpuInfo) -> Reading[MemoryInfo]:
        """nvidia-smi -i N --query-gpu=memory.total,memory.used,memory.free --format=csv
        (NVML: bytes)"""
        return self._dev("nvmlDeviceGetMemoryInfo", gpu, convert=lambda m: MemoryInfo(
            int(m.total), int(m.used), int(m.free)))

    def temperature_c(self, gpu: GpuInfo) -> Reading[int]:
        """nvidia-smi -i N --query-gpu=temperature.gpu --format=csv"""
        return self._dev("nvmlDeviceGetTemperature", gpu, NVML_TEMPERATURE_GPU,
                         convert=int)

    def clock_event_reasons(self, gpu: GpuInfo) -> Reading[list[str]]:
        """nvidia-smi -i N -q -d PERFORMANCE ("Clocks Event Reasons"). The *Throttle* name is
        the pre-535 spelling of the same call; used when the driver lacks the new one."""
        r = self._dev("nvmlDeviceGetCurrentClocksEventReasons", gpu, convert=int)
        if r.state is NvmlState.UNSUPPORTED and "lacks" in r.message:
            r = self._dev("nvmlDeviceGetCurrentClocksThrottleReasons", gpu, convert=int)
        if not r.ok:
            return Reading(None, r.state, r.message)
        return Reading(decode_event_reasons(int(r.get())))

    def _dev(self, fn: str, gpu: GpuInfo, *args: Any, convert: Callable[[Any], T]
             ) -> Reading[T]:
        bad = self._init()
        if bad is not None:
            return Reading(None, bad[0], bad[1])
        return self._read(fn, self.handle(gpu), *args, convert=convert)

    # -- setters (root; none survives a reboot or driver reload) ----------------------------------
    def set_persistence_mode(self, gpu: GpuInfo, enabled: bool) -> None:
        """nvidia-smi -i N -pm 1|0 (legacy: prefer the nvidia-persistenced daemon)"""
        self._set(f"GPU {gpu.index} persistence mode", "nvmlDeviceSetPersistenceMode",
                  self.handle(gpu),
                  NVML_FEATURE_ENABLED if enabled else NVML_FEATURE_DISABLED)

    def set_power_limit_w(self, gpu: GpuInfo, watts: float) -> None:
        """nvidia-smi -i N -pl WATTS (NVML takes mW)"""
        self._set(f"GPU {gpu.index} power limit {watts:g} W", "nvmlDeviceSetPowerManagementLimit",
                  self.handle(gpu), round(watts * 1000))

    def set_locked_graphics_clocks_mhz(self, gpu: GpuInfo, min_mhz: int, max_mhz: int) -> None:
        """nvidia-smi -i N -lgc MIN,MAX (Volta+)"""
        self._set(f"GPU {gpu.index} locked graphics clocks {min_mhz},{max_mhz} MHz",
                  "nvmlDeviceSetGpuLockedClocks", self.handle(gpu), min_mhz, max_mhz)

    def reset_locked_graphics_clocks(self, gpu: GpuInfo) -> None:
        """nvidia-smi -i N -rgc"""
        self._set(f"GPU {gpu.index} reset locked graphics clocks",
                  "nvmlDeviceResetGpuLockedClocks", self.handle(gpu))

    def set_locked_memory_clocks_mhz(self, gpu: GpuInfo, min_mhz: int, max_mhz: int) -> None:
        """nvidia-smi -i N -lmc MIN,MAX (Ampere+; GeForce may refuse: NOT_SUPPORTED)"""
        self._set(f"GPU {gpu.index} locked memory clocks {min_mhz},{max_mhz} MHz",
                  "nvmlDeviceSetMemoryLockedClocks", self.handle(gpu), min_mhz, max_mhz)

    def reset_locked_memory_clocks(self, gpu: GpuInfo) -> None:
        """nvidia-smi -i N -rmc"""
        self._set(f"GPU {gpu.index} reset locked memory clocks",
                  "nvmlDeviceResetMemoryLockedClocks", self.handle(gpu))

    def set_compute_mode(self, gpu: GpuInfo, mode: ComputeMode) -> None:
        """nvidia-smi -i N -c DEFAULT|EXCLUSIVE_PROCESS|PROHIBITED"""
        self._set(f"GPU {gpu.index} compute mode {mode.smi}", "nvmlDeviceSetComputeMode",
                  self.handle(gpu), mode.nvml)

    def find(self, uuid: str) -> GpuInfo:
        for g in self.devices():
            if g.uuid == uuid:
                return g
        raise HostError(f"no GPU with UUID {uuid} on this host (was it replaced?)")


def _identity(v: Any) -> Any:
    return v


def _mw_to_w(mw: Any) -> float:
    return int(mw) / 1000.0


def _clock_type(kind: str) -> int:
    try:
        return {"graphics": NVML_CLOCK_GRAPHICS, "sm": NVML_CLOCK_SM,
                "memory": NVML_CLOCK_MEM, "video": NVML_CLOCK_VIDEO}[kind]
    except KeyError as err:
        raise HostError(f"unknown clock kind {kind!r}") from err


# --- what a --root tree says ---------------------------------------------------------------------
def tree_gpus(host: Host) -> list[GpuInfo]:
    """GPUs listed by the (mapped) /proc/driver/nvidia/gpus/<bus>/information files."""
    out: list[GpuInfo] = []
    for i, bus in enumerate(host.listdir("/proc/driver/nvidia/gpus")):
        try:
            text = host.read_text(f"/proc/driver/nvidia/gpus/{bus}/information") or ""
        except PermissionError:
            text = ""
        fields: dict[str, str] = {}
        for line in text.splitlines():
            k, sep, v = line.partition(":")
            if sep:
                fields[k.strip().lower()] = v.strip()
        name = fields.get("model", "?")
        out.append(GpuInfo(i, fields.get("gpu uuid", f"bus-{bus}"), name,
                           "geforce" if "geforce" in name.lower() else "unknown", "unknown", bus))
    return out


def make_gateway(host: Host, backend: Any | None = None) -> Nvml:
    """The gateway for ``host``: an injected backend (tests), the fake named by
    $HOSTTUNE_FAKE_NVML, the tree's description under --root, else the live pynvml."""
    if backend is not None:
        return Nvml(backend)
    fake = os.environ.get(FAKE_ENV)
    if fake:
        from hosttune.host.gpu.fake import from_env

        return Nvml(from_env(fake))
    if host.offline:
        # Never the live driver for a tree: a tree is not a GPU.
        if host.exists("/proc/driver/nvidia/version"):
            return Nvml(None, unavailable=(
                NvmlState.OFFLINE, "NVML state is not part of a filesystem tree (--root)"),
                tree_gpus=tree_gpus(host))
        return Nvml(None, unavailable=(NvmlState.NO_DRIVER, "no NVIDIA driver in this tree"))
    if not host.exists("/proc/driver/nvidia"):
        # The nvidia module creates /proc/driver/nvidia when it loads; without it nvmlInit can
        # only fail (NVML_ERROR_DRIVER_NOT_LOADED or LIBRARY_NOT_FOUND). Answering here keeps
        # pynvml's ~0.1 s import out of every audit on GPU-less hosts.
        return Nvml(None, unavailable=(
            NvmlState.NO_DRIVER, "no NVIDIA driver (the nvidia kernel module is not loaded)"))
    return Nvml(_pynvml())
