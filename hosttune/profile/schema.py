"""The profile schema (pydantic). One section per setting family; a section left out (null)
is not managed. Unknown keys are errors (``extra="forbid"``): a typo must never be silently
ignored on a production host.

Values that follow the hardware say ``auto``; sizes are '90GiB' / '512MiB' / '50%' (of RAM) or
page counts (plain integers) where the key counts pages."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from hosttune.profile.paths import system_dir_problem
from hosttune.profile.sizes import check_model_name, parse_percent, parse_size, parse_watts
from hosttune.profile.view import gpu_mps_enabled


class Section(BaseModel):
    # defer_build: validators are built on first validation, not at import, so a cached
    # profile (see loader) costs no schema build - audit must start in < 0.3 s.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


# --- where a profile may make hosttune write ----------------------------------------------------
# A path key names a file hosttune owns and rewrites: each is confined to the one directory its
# consumer reads, as a plain file name there (no '/', no '..', not hidden), with the suffix the
# consumer requires (systemd-sysctl and pam_limits read *.conf only, update-grub's grub.d
# *.cfg). Anything else (`sysctl.file: /etc/shadow`, `/../../tmp/x`) is refused here.
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def confined_file(v: str, directory: str, suffixes: tuple[str, ...],
                  exact: tuple[str, ...] = ()) -> str:
    if v in exact:
        return v
    head, _, name = v.rpartition("/")
    if head != directory or not _FILE_NAME_RE.fullmatch(name) or not name.endswith(suffixes):
        also = f" (or {', '.join(exact)})" if exact else ""
        raise ValueError(f"must be a plain file name in {directory}/ ending in "
                         f"{' or '.join(suffixes)}{also}, got {v!r}")
    return v


SizeOrPercent = Annotated[str | int, Field(description="bytes ('90GiB') or percent of RAM")]


def _check_size_or_percent(v: str | int, *, allow_auto: bool = False) -> str | int:
    if allow_auto and v == "auto":
        return v
    if isinstance(v, str) and parse_percent(v) is not None:
        return v
    parse_size(v)
    return v


# --- swap --------------------------------------------------------------------------------------
class SwapSection(Section):
    enabled: bool = Field(False, description="false: swapoff every device and file")
    persist: bool = Field(True, description="disable fstab swap entries / systemd swap units")


# --- cpu frequency -----------------------------------------------------------------------------
class CpuSection(Section):
    governor: str | None = Field("performance", description="scaling_governor for every policy")
    epp: str | None = Field(
        "auto",
        description="energy_performance_preference; 'auto' = what the governor implies "
        "(performance under the performance governor), null = leave alone",
    )


# --- sysctl ------------------------------------------------------------------------------------
_FLOOR_RE = re.compile(r"^>=\s*(-?\d+)$")


class SysctlSection(Section):
    file: str = Field("/etc/sysctl.d/90-hosttune.conf",
                      description="a file name in /etc/sysctl.d/ (*.conf)")
    settings: dict[str, str | int] = Field(
        default_factory=dict,
        description="key -> value; '>= N' is a floor: ok when the kernel already has more",
    )

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return confined_file(v, "/etc/sysctl.d", (".conf",))

    @field_validator("settings", mode="before")
    @classmethod
    def _no_bool(cls, v: object) -> object:
        # before validation: `str | int` turns a YAML true into 1 (vm.swappiness: true -> 1)
        if isinstance(v, dict):
            for key, val in v.items():
                if isinstance(val, bool):
                    raise ValueError(f"{key}: expected a number or string, got a boolean")
        return v

    @field_validator("settings")
    @classmethod
    def _keys(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        for key, val in v.items():
            if not re.fullmatch(r"[a-z0-9_][a-z0-9_.\-/]*", key):
                raise ValueError(f"{key!r} is not a sysctl key")
            if key.replace("/", ".") == "vm.nr_hugepages":
                raise ValueError(
                    "vm.nr_hugepages is managed by the 'hugepages' section (per NUMA node, "
                    "retried and verified); remove it from sysctl"
                )
            if isinstance(val, bool):
                raise ValueError(f"{key}: expected a number or string, got a boolean")
            if isinstance(val, str) and val.strip().startswith(">") and not _FLOOR_RE.match(
                val.strip()
            ):
                raise ValueError(f"{key}: a floor is written '>= N', got {val!r}")
        return v


# --- memlock -----------------------------------------------------------------------------------
class MemlockSection(Section):
    limit: str | int = Field("unlimited", description="'unlimited' or a size ('64GiB')")
    scope: Literal["group", "everyone"] = "group"
    group: str = Field("inference", description="limits.d applies to @group (scope: group)")
    limits_file: str = Field("/etc/security/limits.d/90-hosttune-memlock.conf",
                             description="a file name in /etc/security/limits.d/ (*.conf)")
    services: list[str] = Field(
        default_factory=lambda: ["docker.service", "containerd.service"],
        description="systemd services that get LimitMEMLOCK drop-ins (container runtimes do "
        "not read limits.d: that is PAM only)",
    )

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: str | int) -> str | int:
        if v != "unlimited":
            parse_size(v)
        return v

    @field_validator("limits_file")
    @classmethod
    def _file(cls, v: str) -> str:
        return confined_file(v, "/etc/security/limits.d", (".conf",))


# --- huge pages ----------------------------------------------------------------------------------
class HugePagePool(Section):
    pagesize: Literal["2M", "1G"] = "2M"
    size: str | int = Field(
        "auto",
        description="page count (int), bytes ('90GiB'), percent of RAM ('50%'), or 'auto' = "
        "what this pagesize's hugetlbfs mounts hold",
    )
    nodes: Literal["spread", "any"] | dict[int, str | int] = Field(
        "spread",
        description="'spread': split evenly over NUMA nodes with memory; 'any': the global "
        "counter; or {node: size} per node",
    )
    reserve: Literal["auto", "runtime", "boot"] = Field(
        "auto", description="'runtime': allocate the pool now (sysfs; re-applied at boot "
        "by the boot unit); 'boot': reserve it on the kernel command line (hugepagesz= "
        "hugepages=, written by the kernel_cmdline section) - for 1G pools the kernel cannot "
        "allocate once memory is fragmented; 'auto': runtime, and a 1G pool the kernel "
        "allocates only in part at apply keeps what it got and is reserved on the kernel "
        "command line from then on (needs a kernel_cmdline section; 2M pools: runtime)")

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        return _check_size_or_percent(v, allow_auto=True)

    @field_validator("nodes")
    @classmethod
    def _nodes(
        cls, v: Literal["spread", "any"] | dict[int, str | int]
    ) -> Literal["spread", "any"] | dict[int, str | int]:
        if isinstance(v, dict):
            if not v:
                raise ValueError("give at least one node, or 'spread' / 'any'")
            for node, size in v.items():
                if node < 0:
                    raise ValueError(f"node {node}: NUMA node ids are >= 0")
                _check_size_or_percent(size)
        return v


class HugePagesSection(Section):
    pools: list[HugePagePool] = Field(default_factory=list)
    min_free_ram: str | int = Field(
        "8GiB", description="refuse a pool that leaves less RAM than this for the OS"
    )
    retries: int = Field(5, ge=1, le=50)
    thp: Literal["always", "madvise", "never"] | None = Field(
        "madvise", description="transparent huge pages mode; null = leave alone"
    )
    optimize_vmemmap: bool | None = Field(
        None, description="HugeTLB Vmemmap Optimization (vm.hugetlb_optimize_vmemmap): free "
        "the struct-page memory of huge pages (~1.4% of a 2M pool); null = leave alone")

    @field_validator("min_free_ram")
    @classmethod
    def _floor(cls, v: str | int) -> str | int:
        return _check_size_or_percent(v)


# --- hugetlbfs mounts ----------------------------------------------------------------------------
class HugetlbfsMount(Section):
    path: str
    pagesize: Literal["2M", "1G"] = "2M"
    size: str | int = Field("auto", description="bytes, percent of RAM, or 'auto' = the pool")
    mode: str = Field("0770", pattern=r"^0?[0-7]{3,4}$")
    uid: int = Field(0, ge=0, le=2**32 - 2)  # (uid_t)-1 means "no change" to chown(2)
    gid: int | str = Field(0, description="numeric gid or a group name")
    persist: Literal["fstab", "unit"] = "fstab"
    models: list[str] = Field(
        default_factory=list,
        description="model files (host paths) meant to live on this mount: the audit flags a "
        "mount too small to hold them (each rounded up to whole huge pages)",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v.rstrip("/") in ("", "/tmp", "/dev", "/proc", "/sys"):
            raise ValueError(f"expected an absolute mount point of its own, got {v!r}")
        # fstab, mount options and unit files would each need their own escaping
        if re.search(r"[\s,%\\]", v) or "/../" in v + "/" or "/./" in v + "/" or "//" in v:
            raise ValueError(f"a mount point without spaces, commas, '%', '\\' or '..', "
                             f"got {v!r}")
        problem = system_dir_problem(v.rstrip("/"))
        if problem:
            raise ValueError(f"{problem}: mounting hugetlbfs there would hide it; use a "
                             "directory of its own such as /mnt/models")
        return v.rstrip("/")

    @field_validator("gid")
    @classmethod
    def _gid(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 0 <= v <= 2**32 - 2:
            raise ValueError(f"a gid is 0..{2**32 - 2}, got {v}")
        if isinstance(v, str) and not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?", v):
            raise ValueError(f"{v!r} is not a group name")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        return _check_size_or_percent(v, allow_auto=True)


class HugetlbfsSection(Section):
    mounts: list[HugetlbfsMount] = Field(default_factory=list)


# --- boot-time re-apply --------------------------------------------------------------------------
class BootSection(Section):
    unit: bool = Field(True, description="install hosttune-boot.service (re-applies runtime "
                       "settings at boot, before docker.service)")
    profile_path: str = Field("/etc/hosttune/profile.yaml",
                              description="a file name in /etc/hosttune/ (*.yaml)")
    exec: str | None = Field(None, description="hosttune command in ExecStart; default: the "
                             "running Python with -m hosttune")

    @field_validator("profile_path")
    @classmethod
    def _path(cls, v: str) -> str:
        return confined_file(v, "/etc/hosttune", (".yaml", ".yml"))


# --- NVIDIA GPUs (NVML settings, persistence daemon, MPS) ---------------------------------------
ClockSpec = Literal["max-sustained"] | int | tuple[int, int]
PowerSpec = Literal["max", "default"] | int | str
ComputeModeName = Literal["default", "exclusive_process", "prohibited"]


def _check_clock(v: ClockSpec | None) -> ClockSpec | None:
    if isinstance(v, bool):
        raise ValueError("expected MHz, [min, max] or 'max-sustained'")
    if isinstance(v, int) and v <= 0:
        raise ValueError(f"a clock is a positive MHz value, got {v}")
    if isinstance(v, tuple) and not 0 < v[0] <= v[1]:
        raise ValueError(f"[min, max] MHz with 0 < min <= max, got {list(v)}")
    return v


class GpuLockedClocks(Section):
    graphics: ClockSpec | None = Field(
        None, description="nvidia-smi -lgc: MHz, [min, max], or 'max-sustained' (the rated boost "
        "clock); checked against nvmlDeviceGetSupportedGraphicsClocks; Volta+")
    memory: ClockSpec | None = Field(
        None, description="nvidia-smi -lmc: MHz, [min, max], or 'max-sustained' (highest "
        "supported memory clock); Ampere+, datacenter/workstation boards (GeForce: unsupported)")

    @field_validator("graphics", "memory")
    @classmethod
    def _clock(cls, v: ClockSpec | None) -> ClockSpec | None:
        return _check_clock(v)


def _check_power(v: PowerSpec | None) -> PowerSpec | None:
    if v is None or v in ("max", "default"):
        return v
    if parse_watts(v) <= 0:
        raise ValueError("a power limit is a positive number of watts")
    return v


class GpuDeviceSettings(Section):
    """Per-GPU overrides (gpu.devices: keyed by index, UUID or PCI bus id)."""

    power_limit: PowerSpec | None = None
    locked_clocks: GpuLockedClocks | None = None
    compute_mode: ComputeModeName | None = None

    @field_validator("power_limit")
    @classmethod
    def _power(cls, v: PowerSpec | None) -> PowerSpec | None:
        return _check_power(v)


class GpuMps(Section):
    enabled: bool = True
    pipe_dir: str = Field("/run/nvidia-mps", description="CUDA_MPS_PIPE_DIRECTORY (under /run)")
    log_dir: str = Field("/var/log/nvidia-mps", description="CUDA_MPS_LOG_DIRECTORY "
                         "(under /var/log)")

    @field_validator("pipe_dir", "log_dir")
    @classmethod
    def _dirs(cls, v: str, info: ValidationInfo) -> str:
        v = v.rstrip("/")
        base = "/run/" if info.field_name == "pipe_dir" else "/var/log/"
        if v.startswith(("/tmp/", "/var/tmp/", "/dev/shm/")) or v in ("/tmp", "/var/tmp"):
            raise ValueError(f"{v} is under a world-writable directory: another user could "
                             "plant the MPS pipes or logs there; use a path under " + base)
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", v):
            # written into a unit file: '%' is a specifier, spaces split words there
            raise ValueError(f"a directory of letters, digits and ._-/ only, got {v!r}")
        if not v.startswith(base) or "/../" in v + "/" or len(v) <= len(base):
            raise ValueError(f"expected a directory under {base} (systemd creates it with the "
                             f"right owner and mode), got {v!r}")
        return v


class GpuSection(Section):
    persistence: bool | Literal["daemon", "legacy"] | None = Field(
        None, description="true: the nvidia-persistenced daemon, legacy NVML persistence mode "
        "(nvidia-smi -pm 1, deprecated) only when the daemon is not installed")
    persistenced_user: str | None = Field(
        None, description="account nvidia-persistenced drops to (--user); default: an "
        "existing 'nvidia-persistenced' or 'nvpd' account")
    mps: GpuMps | None = Field(None, description="CUDA MPS control daemon; true/false or a "
                               "mapping")
    clients: int | None = Field(None, ge=1, description="how many GPU processes/containers "
                                "share each GPU (the workload section, when present, wins)")
    power_limit: PowerSpec | None = Field(None, description="'max', 'default' or watts")
    locked_clocks: GpuLockedClocks | None = None
    compute_mode: ComputeModeName | None = Field(
        None, description="default | exclusive_process | prohibited; with MPS on, "
        "exclusive_process is implied")
    devices: dict[str, GpuDeviceSettings] = Field(
        default_factory=dict, description="per-GPU overrides keyed by index, UUID or bus id")

    @field_validator("mps", mode="before")
    @classmethod
    def _mps_bool(cls, v: object) -> object:
        if v is True:
            return {}
        if v is False:
            return {"enabled": False}
        return v

    @field_validator("power_limit")
    @classmethod
    def _power(cls, v: PowerSpec | None) -> PowerSpec | None:
        return _check_power(v)

    @field_validator("compute_mode")
    @classmethod
    def _exclusive(cls, v: ComputeModeName | None, info: ValidationInfo
                   ) -> ComputeModeName | None:
        check_exclusive_sharing(v, info.data.get("mps"), info.data.get("clients"))
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: dict[str, GpuDeviceSettings], info: ValidationInfo
                 ) -> dict[str, GpuDeviceSettings]:
        for key, dev in v.items():
            try:
                check_exclusive_sharing(dev.compute_mode, info.data.get("mps"),
                                        info.data.get("clients"))
            except ValueError as err:
                raise ValueError(f"{key}.compute_mode: {err}") from err
        return v

    @property
    def mps_enabled(self) -> bool:
        return gpu_mps_enabled(self)  # shared with the audit's views (view.DERIVED)


def check_exclusive_sharing(mode: str | None, mps: GpuMps | None, clients: int | None) -> None:
    """EXCLUSIVE_PROCESS admits one CUDA context per GPU: several GPU containers then fail
    with 'all CUDA-capable devices are busy or unavailable' unless MPS multiplexes them."""
    mps_on = mps is not None and mps.enabled
    if mode == "exclusive_process" and not mps_on and clients is not None and clients > 1:
        raise ValueError(
            f"exclusive_process allows one process per GPU, but {clients} GPU clients share "
            "it: all but the first fail with 'CUDA-capable device(s) is/are busy or "
            "unavailable'. Use compute_mode: default, or turn on mps (which needs "
            "exclusive_process)")
    if mode == "prohibited" and mps_on:
        raise ValueError("prohibited forbids every CUDA context, the MPS server's too")

# --- GPU / driver / boot layer ---------------------------------------------------------------
_MODPROBE_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:;,=+@%-]*$")


class NvidiaModulesSection(Section):
    file: str = Field("/etc/modprobe.d/90-hosttune-nvidia.conf",
                      description="a file name in /etc/modprobe.d/ (*.conf)")
    options: dict[str, dict[str, str | int]] = Field(
        default_factory=dict,
        description="module -> {parameter: value}, e.g. nvidia: {NVreg_EnableGpuFirmware: 1}; "
        "validated against the installed driver's parameters",
    )
    initramfs: bool = Field(True, description="regenerate the initramfs after a change "
                            "(update-initramfs -u / dracut -f)")

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return confined_file(v, "/etc/modprobe.d", (".conf",))

    @field_validator("options", mode="before")
    @classmethod
    def _no_bool(cls, v: object) -> object:
        if isinstance(v, dict):
            for mod, params in v.items():
                for name, val in (params.items() if isinstance(params, dict) else ()):
                    if isinstance(val, bool):
                        raise ValueError(f"{mod}.{name}: write 1/0 (or Y/N), not a YAML "
                                         "boolean")
        return v

    @field_validator("options")
    @classmethod
    def _opts(cls, v: dict[str, dict[str, str | int]]) -> dict[str, dict[str, str | int]]:
        for mod, params in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", mod):
                raise ValueError(f"{mod!r} is not a module name")
            for name, val in params.items():
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise ValueError(f"{mod}: {name!r} is not a module parameter name")
                if isinstance(val, bool):
                    raise ValueError(f"{mod}.{name}: write 1/0 (or Y/N), not a YAML boolean")
                if not _MODPROBE_VALUE_RE.match(str(val)):
                    raise ValueError(f"{mod}.{name}: value {val!r} has spaces, quotes or '#'; "
                                     "modprobe.d has no trailing comments and splits on spaces")
        return v


class GpuIrqSection(Section):
    cpus: str = Field(
        ..., description="CPU list ('15,31') for the IRQs of every NVIDIA GPU, or "
        "'node-local' = the CPUs of each GPU's NUMA node (local_cpulist)",
    )
    irqbalance: bool = Field(True, description="keep irqbalance off the GPU IRQs (policy script "
                             "+ irqbalance.service drop-in; no edit of /etc/default/irqbalance)")

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: str) -> str:
        if v == "node-local":
            return v
        from hosttune.host.parsers import parse_cpulist

        try:
            if not parse_cpulist(str(v)):
                raise ValueError("empty")
        except ValueError as err:
            raise ValueError(f"expected a CPU list like '15,31' or 'node-local', got {v!r}") \
                from err
        return str(v)


class CudaEnvSection(Section):
    file: str = Field("/etc/environment", description="/etc/environment (pam_env) or a file "
                      "name in /etc/environment.d/ (*.conf, systemd user sessions)")
    variables: dict[str, str | int] = Field(
        default_factory=dict, description="NAME -> value, written in a marked block")
    cache_dir_mode: str = Field("0770", pattern=r"^0?[0-7]{3,4}$",
                                description="mode of the CUDA_CACHE_PATH directory")
    cache_dir_group: str | None = Field(
        "inference", description="group owning CUDA_CACHE_PATH (members share the JIT cache)")

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return confined_file(v, "/etc/environment.d", (".conf",), exact=("/etc/environment",))

    @field_validator("variables", mode="before")
    @classmethod
    def _no_bool(cls, v: object) -> object:
        if isinstance(v, dict):
            for name, val in v.items():
                if isinstance(val, bool):
                    raise ValueError(f"{name}: write 0/1, not a YAML boolean")
        return v

    @field_validator("variables")
    @classmethod
    def _vars(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        for name, val in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if isinstance(val, bool):
                raise ValueError(f"{name}: write 0/1, not a YAML boolean")
            if not re.fullmatch(r"[A-Za-z0-9_./:,=+@%-]*", str(val)):
                raise ValueError(f"{name}: value {val!r} needs quoting; /etc/environment "
                                 "(pam_env) has no shell quoting rules")
        return v


class KernelCmdlineSection(Section):
    params: list[str] = Field(default_factory=list,
                              description="parameters appended to GRUB_CMDLINE_LINUX_DEFAULT")
    hugepages_1g: int | None = Field(
        None, ge=1, description="reserve N 1 GiB pages at boot (hugepagesz=1G hugepages=N): "
        "1 GiB pages rarely allocate at runtime once memory is fragmented")
    default_hugepagesz: Literal["2M", "1G"] | None = Field(
        None, description="default_hugepagesz= (the page size of vm.nr_hugepages, of "
        "hugetlbfs mounts without pagesize= and of MAP_HUGETLB without a size flag)")
    file: str = Field("/etc/default/grub.d/90-hosttune.cfg",
                      description="a file name in /etc/default/grub.d/ (*.cfg)")

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return confined_file(v, "/etc/default/grub.d", (".cfg",))

    @field_validator("params")
    @classmethod
    def _params(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"[A-Za-z0-9_.,:=/+@-]+", p):
                raise ValueError(f"{p!r}: a kernel parameter is one word without quotes, "
                                 "spaces or shell characters")
            if p.split("=", 1)[0] in ("hugepagesz", "hugepages", "default_hugepagesz"):
                raise ValueError("use hugepages_1g: N (or a hugepages pool with reserve: "
                                 "boot) and default_hugepagesz for boot-time huge pages")
        return v
# --- model store (hosttune models) ----------------------------------------------------------
class DeclaredModel(Section):
    name: str = Field(description="file name in the store")
    file: str | None = Field(None, description="source file to load from")
    size: str | int | None = Field(None, description="model size when the file is not here "
                                   "yet (for `hosttune models pool`)")
    mount: str | None = Field(None, description="hugetlbfs mount (default: models.mount)")
    node: int | None = Field(None, ge=0, description="NUMA node for its pages")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            parse_size(v)
        return v


class ModelsSection(Section):
    mount: str | None = Field(None, description="default store mount (one of the hugetlbfs "
                              "mounts); default: the only hugetlbfs mount")
    declared: list[DeclaredModel] = Field(default_factory=list)


# --- the profile ---------------------------------------------------------------------------
class Profile(Section):
    name: str
    description: str = ""
    extends: str | None = None
    swap: SwapSection | None = None
    cpu: CpuSection | None = None
    sysctl: SysctlSection | None = None
    memlock: MemlockSection | None = None
    hugepages: HugePagesSection | None = None
    hugetlbfs: HugetlbfsSection | None = None
    boot: BootSection | None = None
    workload: WorkloadSection | None = None
    gpu: GpuSection | None = None
    nvidia_modules: NvidiaModulesSection | None = None
    gpu_irq: GpuIrqSection | None = None
    cuda_env: CudaEnvSection | None = None
    kernel_cmdline: KernelCmdlineSection | None = None
    models: ModelsSection | None = None


# --- container workload (hosttune containers plan|compose|verify) -------------------------------
class _Workers(Section):
    memory: str | int = Field(
        "8GiB", description="mem_limit per worker: KV cache and buffers. A model on hugetlbfs is "
        "charged to the hugetlb cgroup, not to this limit")
    models: list[str] = Field(
        default_factory=list, description="model file per worker (relative to the store); one "
        "entry = shared by all workers (one copy in huge pages)")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | int) -> str | int:
        parse_size(v)
        return v


class CpuWorkers(_Workers):
    count: int | Literal["auto"] = Field(
        0, description="llama.cpp CPU workers; 'auto' = one per L3 domain (CCD) left free")
    cores: int | Literal["auto"] = Field(
        "auto", description="physical cores per worker; 'auto' = the largest equal share that "
        "keeps each worker inside one L3 domain (or whole L3 domains of one NUMA node)")
    cpusets: list[str] | None = Field(
        None, description="hand-made cpusets, one per worker: checked (overlap, SMT siblings, "
        "L3/NUMA spans) instead of planned")

    @field_validator("count")
    @classmethod
    def _count(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("a worker count cannot be negative")
        return v

    @field_validator("cores")
    @classmethod
    def _cores(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("a worker needs at least one core")
        return v


class GpuWorkers(_Workers):
    count: int = Field(0, ge=0, description="GPU workers (llama.cpp with CUDA)")
    feed_cores: int = Field(2, ge=1, description="physical cores per GPU worker for the host "
                            "threads that feed its GPU, on the GPU's NUMA node")
    gpus: Literal["auto"] | list[int] = Field(
        "auto", description="GPU index (PCI bus order) per worker; 'auto' = worker i -> GPU i")


class WorkloadSection(Section):
    image: str = Field("local/llama-cpp:server", description="image of every worker")
    project: str = Field("hosttune", pattern=r"^[a-z0-9][a-z0-9_-]*$",
                         description="compose project name; prefixes container names")
    cpu_workers: CpuWorkers = Field(default_factory=CpuWorkers)
    gpu_workers: GpuWorkers = Field(default_factory=GpuWorkers)
    system_cores: int = Field(1, ge=0, description="physical cores kept for the OS, dockerd, "
                              "IRQs - never in a worker cpuset")
    reserved_cpus: str = Field("", description="extra logical CPUs never assigned (cpulist); "
                               "their whole physical cores are kept out")
    smt: Literal["keep-together", "leave-idle"] = Field(
        "keep-together", description="SMT siblings of a worker's cores: in its cpuset, or idle")
    memlock: Literal["ipc_lock", "ulimit"] = Field(
        "ulimit", description="how workers may mlock: a memlock ulimit (bounded by the daemon's "
        "own limit) or cap_add IPC_LOCK (mlock regardless of RLIMIT_MEMLOCK)")
    memlock_limit: str | int = Field("unlimited", description="memlock ulimit: 'unlimited' or "
                                     "a size")
    mlock: bool = Field(True, description="ask llama.cpp to mlock the model (LLAMA_ARG_MLOCK)")
    store: str | None = Field(None, description="host path of the hugetlbfs model store; "
                              "default: the profile's first hugetlbfs mount")
    store_target: str = Field("/models", description="where the store appears in containers")
    shim: str | None = Field(None, description="host path of the huge-page loader shim (.so), "
                             "LD_PRELOADed only for models whose loader is strict")
    shim_for: list[str] = Field(
        default_factory=lambda: [".safetensors"],
        description="model suffixes whose loaders refuse a padded hugetlbfs file "
        "(safetensors: 'incomplete metadata, file not fully covered')")
    tmpfs_size: str | int = Field("64MiB", description="size of the writable /tmp tmpfs")
    port_base: int | None = Field(8080, ge=1, le=65000, description="worker i listens on "
                                  "127.0.0.1:(port_base+i); null = no published ports")

    @field_validator("memlock_limit")
    @classmethod
    def _memlock_limit(cls, v: str | int) -> str | int:
        if v != "unlimited":
            parse_size(v)
        return v

    @field_validator("tmpfs_size")
    @classmethod
    def _tmpfs(cls, v: str | int) -> str | int:
        parse_size(v)
        return v

    @field_validator("store", "store_target", "shim")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"expected an absolute path, got {v!r}")
        return v
