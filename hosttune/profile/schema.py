"""The profile schema (msgspec Structs). One section per setting family; a section left out
(null) is not managed. Unknown keys are errors (``forbid_unknown_fields``): a typo must never be
silently ignored on a production host. Sections are frozen: a loaded profile is never changed
(``msgspec.structs.replace`` makes a changed copy).

Values that follow the hardware say ``auto``; sizes are '90GiB' / '512MiB' / '50%' (of RAM) or
page counts (plain integers) where the key counts pages.

msgspec checks the types (and ``Meta`` bounds) while it converts the merged YAML
(``loader.load_profile``, ``msgspec.convert(..., strict=False)``) and while it decodes a cached
profile (``cache.py``); the rules beyond types are each section's ``__post_init__``, which
msgspec runs on both paths. A rule about one key raises `FieldError` naming that key, so the
loader's error says ``hugepages.pools.0.size``, not just ``hugepages.pools.0``.

`hosttune audit` imports this module on every run (a cached profile is decoded into these
classes): it imports msgspec and nothing heavy, and its annotations are plain ones rather than
``Annotated[..., Meta(description=...)]`` (each costs ~30 us to build, at import or when msgspec
first resolves the types); the comment above each key says what it means."""

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, field
from msgspec.structs import force_setattr

from hosttune.profile.paths import system_dir_problem
from hosttune.profile.sizes import check_model_name, parse_percent, parse_size, parse_watts


class FieldError(ValueError):
    """A rule of one key of a section failed. ``field``: that key's name within the section
    (the loader adds the section's path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Field:
    """``with _Field("size"): ...``: a ValueError raised inside is the FieldError of that key."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, err: BaseException | None, tb: Any) -> None:
        if isinstance(err, ValueError) and not isinstance(err, FieldError):
            raise FieldError(self.name, str(err)) from err


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every section: unknown keys refused (inherited); frozen (inherited too, and
    repeated on each class for the type checker)."""


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


SizeOrPercent = str | int  # bytes ('90GiB') or percent of RAM


def _check_size_or_percent(v: str | int, *, allow_auto: bool = False) -> str | int:
    if allow_auto and v == "auto":
        return v
    if isinstance(v, str) and parse_percent(v) is not None:
        return v
    parse_size(v)
    return v


# --- swap --------------------------------------------------------------------------------------
class SwapSection(Section, frozen=True):
    # false: swapoff every device and file
    enabled: bool = False
    # disable fstab swap entries / systemd swap units
    persist: bool = True


# --- cpu frequency -----------------------------------------------------------------------------
class CpuSection(Section, frozen=True):
    # scaling_governor for every policy
    governor: str | None = "performance"
    # energy_performance_preference; 'auto' = what the governor implies (performance under the
    # performance governor), null = leave alone
    epp: str | None = "auto"


# --- sysctl ------------------------------------------------------------------------------------
_FLOOR_RE = re.compile(r"^>=\s*(-?\d+)$")


class SysctlSection(Section, frozen=True):
    # a file name in /etc/sysctl.d/ (*.conf)
    file: str = "/etc/sysctl.d/90-hosttune.conf"
    # key -> value; '>= N' is a floor: ok when the kernel already has more. bool is in the type
    # only to be refused by name below: a YAML true is no sysctl value
    settings: dict[str, str | int | bool] = {}

    def __post_init__(self) -> None:
        with _Field("file"):
            confined_file(self.file, "/etc/sysctl.d", (".conf",))
        with _Field("settings"):
            for key, val in self.settings.items():
                if isinstance(val, bool):
                    raise ValueError(f"{key}: expected a number or string, got a boolean")
            for key, val in self.settings.items():
                if not re.fullmatch(r"[a-z0-9_][a-z0-9_.\-/]*", key):
                    raise ValueError(f"{key!r} is not a sysctl key")
                if key.replace("/", ".") == "vm.nr_hugepages":
                    raise ValueError(
                        "vm.nr_hugepages is managed by the 'hugepages' section (per NUMA node, "
                        "retried and verified); remove it from sysctl"
                    )
                if isinstance(val, str) and val.strip().startswith(">") and \
                        not _FLOOR_RE.match(val.strip()):
                    raise ValueError(f"{key}: a floor is written '>= N', got {val!r}")


# --- memlock -----------------------------------------------------------------------------------
class MemlockSection(Section, frozen=True):
    # 'unlimited' or a size ('64GiB')
    limit: str | int = "unlimited"
    scope: Literal["group", "everyone"] = "group"
    # limits.d applies to @group (scope: group)
    group: str = "inference"
    # a file name in /etc/security/limits.d/ (*.conf)
    limits_file: str = "/etc/security/limits.d/90-hosttune-memlock.conf"
    # systemd services that get LimitMEMLOCK drop-ins (container runtimes do not read limits.d: that
    # is PAM only)
    services: list[str] = field(default_factory=lambda: ["docker.service", "containerd.service"])

    def __post_init__(self) -> None:
        with _Field("limit"):
            if self.limit != "unlimited":
                parse_size(self.limit)
        with _Field("limits_file"):
            confined_file(self.limits_file, "/etc/security/limits.d", (".conf",))


# --- huge pages ----------------------------------------------------------------------------------
class HugePagePool(Section, frozen=True):
    pagesize: Literal["2M", "1G"] = "2M"
    # page count (int), bytes ('90GiB'), percent of RAM ('50%'), or 'auto' = what this pagesize's
    # hugetlbfs mounts hold
    size: str | int = "auto"
    # 'spread': split evenly over NUMA nodes with memory; 'any': the global counter; or {node: size}
    # per node
    nodes: Literal["spread", "any"] | dict[int, str | int] = "spread"
    # 'runtime': allocate the pool now (sysfs; re-applied at boot by the boot unit); 'boot': reserve
    # it on the kernel command line (hugepagesz= hugepages=, written by the kernel_cmdline section)
    # - for 1G pools the kernel cannot allocate once memory is fragmented; 'auto': runtime, and a 1G
    # pool the kernel allocates only in part at apply keeps what it got and is reserved on the
    # kernel command line from then on (needs a kernel_cmdline section; 2M pools: runtime)
    reserve: Literal["auto", "runtime", "boot"] = "auto"

    def __post_init__(self) -> None:
        with _Field("size"):
            _check_size_or_percent(self.size, allow_auto=True)
        with _Field("nodes"):
            if isinstance(self.nodes, dict):
                if not self.nodes:
                    raise ValueError("give at least one node, or 'spread' / 'any'")
                for node, size in self.nodes.items():
                    if node < 0:
                        raise ValueError(f"node {node}: NUMA node ids are >= 0")
                    _check_size_or_percent(size)


class HugePagesSection(Section, frozen=True):
    pools: list[HugePagePool] = []
    # refuse a pool that leaves less RAM than this for the OS
    min_free_ram: str | int = "8GiB"
    retries: Annotated[int, Meta(ge=1, le=50)] = 5
    # transparent huge pages mode; null = leave alone
    thp: Literal["always", "madvise", "never"] | None = "madvise"
    # HugeTLB Vmemmap Optimization (vm.hugetlb_optimize_vmemmap): free the struct-page memory of
    # huge pages (~1.4% of a 2M pool); null = leave alone
    optimize_vmemmap: bool | None = None

    def __post_init__(self) -> None:
        with _Field("min_free_ram"):
            _check_size_or_percent(self.min_free_ram)


# --- hugetlbfs mounts ----------------------------------------------------------------------------
class HugetlbfsMount(Section, frozen=True):
    path: str
    pagesize: Literal["2M", "1G"] = "2M"
    # bytes, percent of RAM, or 'auto' = the pool
    size: str | int = "auto"
    mode: Annotated[str, Meta(pattern=r"^0?[0-7]{3,4}$")] = "0770"
    uid: Annotated[int, Meta(ge=0, le=2**32 - 2)] = 0  # (uid_t)-1 means "no change" to chown(2)
    # numeric gid or a group name
    gid: int | str = 0
    persist: Literal["fstab", "unit"] = "fstab"
    # model files (host paths) meant to live on this mount: the audit flags a mount too small to
    # hold them (each rounded up to whole huge pages)
    models: list[str] = []

    def __post_init__(self) -> None:
        with _Field("path"):
            v = self.path
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
            if v != v.rstrip("/"):
                force_setattr(self, "path", v.rstrip("/"))
        with _Field("size"):
            _check_size_or_percent(self.size, allow_auto=True)
        with _Field("gid"):
            g = self.gid
            if isinstance(g, int) and not 0 <= g <= 2**32 - 2:
                raise ValueError(f"a gid is 0..{2**32 - 2}, got {g}")
            if isinstance(g, str) and not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?", g):
                raise ValueError(f"{g!r} is not a group name")


class HugetlbfsSection(Section, frozen=True):
    mounts: list[HugetlbfsMount] = []


# --- boot-time re-apply --------------------------------------------------------------------------
class BootSection(Section, frozen=True):
    # install hosttune-boot.service (re-applies runtime settings at boot, before docker.service)
    unit: bool = True
    # a file name in /etc/hosttune/ (*.yaml)
    profile_path: str = "/etc/hosttune/profile.yaml"
    # hosttune command in ExecStart; default: the running Python with -m hosttune
    exec: str | None = None

    def __post_init__(self) -> None:
        with _Field("profile_path"):
            confined_file(self.profile_path, "/etc/hosttune", (".yaml", ".yml"))


# --- NVIDIA GPUs (NVML settings, persistence daemon, MPS) ---------------------------------------
ClockSpec = Literal["max-sustained"] | int | tuple[int, int]
PowerSpec = int | str  # 'max', 'default', watts (450) or '450W'
ComputeModeName = Literal["default", "exclusive_process", "prohibited"]


def _check_clock(v: ClockSpec | None) -> ClockSpec | None:
    if isinstance(v, bool):
        raise ValueError("expected MHz, [min, max] or 'max-sustained'")
    if isinstance(v, int) and v <= 0:
        raise ValueError(f"a clock is a positive MHz value, got {v}")
    if isinstance(v, tuple) and not 0 < v[0] <= v[1]:
        raise ValueError(f"[min, max] MHz with 0 < min <= max, got {list(v)}")
    return v


class GpuLockedClocks(Section, frozen=True):
    # nvidia-smi -lgc: MHz, [min, max], or 'max-sustained' (the rated boost clock); checked against
    # nvmlDeviceGetSupportedGraphicsClocks; Volta+
    graphics: ClockSpec | None = None
    # nvidia-smi -lmc: MHz, [min, max], or 'max-sustained' (highest supported memory clock);
    # Ampere+, datacenter/workstation boards (GeForce: unsupported)
    memory: ClockSpec | None = None

    def __post_init__(self) -> None:
        with _Field("graphics"):
            _check_clock(self.graphics)
        with _Field("memory"):
            _check_clock(self.memory)


def _check_power(v: PowerSpec | None) -> PowerSpec | None:
    if v is None or v in ("max", "default"):
        return v
    if parse_watts(v) <= 0:
        raise ValueError("a power limit is a positive number of watts")
    return v


class GpuDeviceSettings(Section, frozen=True):
    """Per-GPU overrides (gpu.devices: keyed by index, UUID or PCI bus id)."""

    power_limit: PowerSpec | None = None
    locked_clocks: GpuLockedClocks | None = None
    compute_mode: ComputeModeName | None = None

    def __post_init__(self) -> None:
        with _Field("power_limit"):
            _check_power(self.power_limit)


class GpuMps(Section, frozen=True):
    enabled: bool = True
    # CUDA_MPS_PIPE_DIRECTORY (under /run)
    pipe_dir: str = "/run/nvidia-mps"
    # CUDA_MPS_LOG_DIRECTORY (under /var/log)
    log_dir: str = "/var/log/nvidia-mps"

    def __post_init__(self) -> None:
        for name, base in (("pipe_dir", "/run/"), ("log_dir", "/var/log/")):
            with _Field(name):
                v = _mps_dir(getattr(self, name), base)
                if v != getattr(self, name):
                    force_setattr(self, name, v)


def _mps_dir(v: str, base: str) -> str:
    v = v.rstrip("/")
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


if TYPE_CHECKING:
    _MpsSpec = GpuMps
else:
    # true / false as well: __post_init__ turns them into GpuMps() / GpuMps(enabled=False),
    # so a loaded profile's gpu.mps is always a GpuMps (or None)
    _MpsSpec = GpuMps | bool


class GpuSection(Section, frozen=True):
    # true: the nvidia-persistenced daemon, legacy NVML persistence mode (nvidia-smi -pm 1,
    # deprecated) only when the daemon is not installed
    persistence: bool | Literal["daemon", "legacy"] | None = None
    # account nvidia-persistenced drops to (--user); default: an existing 'nvidia-persistenced' or
    # 'nvpd' account
    persistenced_user: str | None = None
    # CUDA MPS control daemon; true/false or a mapping
    mps: _MpsSpec | None = None
    # how many GPU processes/containers share each GPU (the workload section, when present, wins)
    clients: Annotated[int, Meta(ge=1)] | None = None
    # 'max', 'default' or watts
    power_limit: PowerSpec | None = None
    locked_clocks: GpuLockedClocks | None = None
    # default | exclusive_process | prohibited; with MPS on, exclusive_process is implied
    compute_mode: ComputeModeName | None = None
    # per-GPU overrides keyed by index, UUID or bus id
    devices: dict[str, GpuDeviceSettings] = {}

    def __post_init__(self) -> None:
        mps: Any = self.mps
        if mps is True:
            force_setattr(self, "mps", GpuMps())
        elif mps is False:
            force_setattr(self, "mps", GpuMps(enabled=False))
        with _Field("power_limit"):
            _check_power(self.power_limit)
        with _Field("compute_mode"):
            check_exclusive_sharing(self.compute_mode, self.mps, self.clients)
        for key, dev in self.devices.items():
            try:
                check_exclusive_sharing(dev.compute_mode, self.mps, self.clients)
            except ValueError as err:
                raise FieldError("devices", f"{key}.compute_mode: {err}") from err

    @property
    def mps_enabled(self) -> bool:
        """An ``mps`` mapping (or ``mps: true``) that is not ``enabled: false``."""
        return self.mps is not None and self.mps.enabled


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


class NvidiaModulesSection(Section, frozen=True):
    # a file name in /etc/modprobe.d/ (*.conf)
    file: str = "/etc/modprobe.d/90-hosttune-nvidia.conf"
    # bool in the type only to be refused by name below (write 1/0)
    # module -> {parameter: value}, e.g. nvidia: {NVreg_EnableGpuFirmware: 1}; validated against the
    # installed driver's parameters
    options: dict[str, dict[str, str | int | bool]] = {}
    # regenerate the initramfs after a change (update-initramfs -u / dracut -f)
    initramfs: bool = True

    def __post_init__(self) -> None:
        with _Field("file"):
            confined_file(self.file, "/etc/modprobe.d", (".conf",))
        with _Field("options"):
            for mod, params in self.options.items():
                for name, val in params.items():
                    if isinstance(val, bool):
                        raise ValueError(f"{mod}.{name}: write 1/0 (or Y/N), not a YAML "
                                         "boolean")
            for mod, params in self.options.items():
                if not re.fullmatch(r"[A-Za-z0-9_-]+", mod):
                    raise ValueError(f"{mod!r} is not a module name")
                for name, val in params.items():
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                        raise ValueError(f"{mod}: {name!r} is not a module parameter name")
                    if not _MODPROBE_VALUE_RE.match(str(val)):
                        raise ValueError(f"{mod}.{name}: value {val!r} has spaces, quotes or "
                                         "'#'; modprobe.d has no trailing comments and splits "
                                         "on spaces")


class GpuIrqSection(Section, frozen=True):
    # CPU list ('15,31') for the IRQs of every NVIDIA GPU, or 'node-local' = the CPUs of each GPU's
    # NUMA node (local_cpulist)
    cpus: str
    # keep irqbalance off the GPU IRQs (policy script + irqbalance.service drop-in; no edit of
    # /etc/default/irqbalance)
    irqbalance: bool = True

    def __post_init__(self) -> None:
        if self.cpus == "node-local":
            return
        from hosttune.host.parsers import parse_cpulist

        try:
            if not parse_cpulist(self.cpus):
                raise ValueError("empty")
        except ValueError as err:
            raise FieldError("cpus", f"expected a CPU list like '15,31' or 'node-local', "
                             f"got {self.cpus!r}") from err


class CudaEnvSection(Section, frozen=True):
    # /etc/environment (pam_env) or a file name in /etc/environment.d/ (*.conf, systemd user
    # sessions)
    file: str = "/etc/environment"
    # bool in the type only to be refused by name below (write 0/1)
    # NAME -> value, written in a marked block
    variables: dict[str, str | int | bool] = {}
    # mode of the CUDA_CACHE_PATH directory
    cache_dir_mode: Annotated[str, Meta(pattern="^0?[0-7]{3,4}$")] = "0770"
    # group owning CUDA_CACHE_PATH (members share the JIT cache)
    cache_dir_group: str | None = "inference"

    def __post_init__(self) -> None:
        with _Field("file"):
            confined_file(self.file, "/etc/environment.d", (".conf",),
                          exact=("/etc/environment",))
        with _Field("variables"):
            for name, val in self.variables.items():
                if isinstance(val, bool):
                    raise ValueError(f"{name}: write 0/1, not a YAML boolean")
            for name, val in self.variables.items():
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise ValueError(f"{name!r} is not an environment variable name")
                if not re.fullmatch(r"[A-Za-z0-9_./:,=+@%-]*", str(val)):
                    raise ValueError(f"{name}: value {val!r} needs quoting; /etc/environment "
                                     "(pam_env) has no shell quoting rules")


class KernelCmdlineSection(Section, frozen=True):
    # parameters appended to GRUB_CMDLINE_LINUX_DEFAULT
    params: list[str] = []
    # reserve N 1 GiB pages at boot (hugepagesz=1G hugepages=N): 1 GiB pages rarely allocate at
    # runtime once memory is fragmented
    hugepages_1g: Annotated[int, Meta(ge=1)] | None = None
    # default_hugepagesz= (the page size of vm.nr_hugepages, of hugetlbfs mounts without pagesize=
    # and of MAP_HUGETLB without a size flag)
    default_hugepagesz: Literal["2M", "1G"] | None = None
    # a file name in /etc/default/grub.d/ (*.cfg)
    file: str = "/etc/default/grub.d/90-hosttune.cfg"

    def __post_init__(self) -> None:
        with _Field("params"):
            for p in self.params:
                if not re.fullmatch(r"[A-Za-z0-9_.,:=/+@-]+", p):
                    raise ValueError(f"{p!r}: a kernel parameter is one word without quotes, "
                                     "spaces or shell characters")
                if p.split("=", 1)[0] in ("hugepagesz", "hugepages", "default_hugepagesz"):
                    raise ValueError("use hugepages_1g: N (or a hugepages pool with reserve: "
                                     "boot) and default_hugepagesz for boot-time huge pages")
        with _Field("file"):
            confined_file(self.file, "/etc/default/grub.d", (".cfg",))


# --- model store (hosttune models) ----------------------------------------------------------
class DeclaredModel(Section, frozen=True):
    # file name in the store
    name: str
    # source file to load from
    file: str | None = None
    # model size when the file is not here yet (for `hosttune models pool`)
    size: str | int | None = None
    # hugetlbfs mount (default: models.mount)
    mount: str | None = None
    # NUMA node for its pages
    node: Annotated[int, Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        with _Field("name"):
            check_model_name(self.name)
        with _Field("size"):
            if self.size is not None:
                parse_size(self.size)


class ModelsSection(Section, frozen=True):
    # default store mount (one of the hugetlbfs mounts); default: the only hugetlbfs mount
    mount: str | None = None
    declared: list[DeclaredModel] = []


# --- container workload (hosttune containers plan|compose|verify) -------------------------------
class _Workers(Section, frozen=True):
    # mem_limit per worker: KV cache and buffers. A model on hugetlbfs is charged to the hugetlb
    # cgroup, not to this limit
    memory: str | int = "8GiB"
    # model file per worker (relative to the store); one entry = shared by all workers (one copy in
    # huge pages)
    models: list[str] = []

    def __post_init__(self) -> None:
        with _Field("memory"):
            parse_size(self.memory)


class CpuWorkers(_Workers, frozen=True):
    # llama.cpp CPU workers; 'auto' = one per L3 domain (CCD) left free; unset: one per
    # hand-made cpuset, else none
    count: int | Literal["auto"] | None = None
    # physical cores per worker; 'auto' = the largest equal share that keeps each worker inside one
    # L3 domain (or whole L3 domains of one NUMA node)
    cores: int | Literal["auto"] = "auto"
    # hand-made cpusets, one per worker: checked (overlap, SMT siblings, L3/NUMA spans) instead of
    # planned
    cpusets: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.count, int) and self.count < 0:
            raise FieldError("count", "a worker count cannot be negative")
        if isinstance(self.cores, int) and self.cores < 1:
            raise FieldError("cores", "a worker needs at least one core")


class GpuWorkers(_Workers, frozen=True):
    # GPU workers (llama.cpp with CUDA)
    count: Annotated[int, Meta(ge=0)] = 0
    # physical cores per GPU worker for the host threads that feed its GPU, on the GPU's NUMA node
    feed_cores: Annotated[int, Meta(ge=1)] = 2
    # GPU index (PCI bus order) per worker; 'auto' = worker i -> GPU i
    gpus: Literal["auto"] | list[int] = "auto"


class WorkloadSection(Section, frozen=True):
    # image of every worker
    image: str = "local/llama-cpp:server"
    # compose project name; prefixes container names
    project: Annotated[str, Meta(pattern="^[a-z0-9][a-z0-9_-]*$")] = "hosttune"
    cpu_workers: CpuWorkers = field(default_factory=CpuWorkers)
    gpu_workers: GpuWorkers = field(default_factory=GpuWorkers)
    # physical cores kept for the OS, dockerd, IRQs - never in a worker cpuset
    system_cores: Annotated[int, Meta(ge=0)] = 1
    # extra logical CPUs never assigned (cpulist); their whole physical cores are kept out
    reserved_cpus: str = ""
    # SMT siblings of a worker's cores: in its cpuset, or idle
    smt: Literal["keep-together", "leave-idle"] = "keep-together"
    # how workers may mlock: a memlock ulimit (bounded by the daemon's own limit) or cap_add
    # IPC_LOCK (mlock regardless of RLIMIT_MEMLOCK)
    memlock: Literal["ipc_lock", "ulimit"] = "ulimit"
    # memlock ulimit: 'unlimited' or a size
    memlock_limit: str | int = "unlimited"
    # ask llama.cpp to mlock the model (LLAMA_ARG_MLOCK)
    mlock: bool = True
    # host path of the hugetlbfs model store; default: the profile's first hugetlbfs mount
    store: str | None = None
    # where the store appears in containers
    store_target: str = "/models"
    # host path of the huge-page loader shim (.so), LD_PRELOADed only for models whose loader is
    # strict
    shim: str | None = None
    # model suffixes whose loaders refuse a padded hugetlbfs file (safetensors: 'incomplete
    # metadata, file not fully covered')
    shim_for: list[str] = field(default_factory=lambda: [".safetensors"])
    # size of the writable /tmp tmpfs
    tmpfs_size: str | int = "64MiB"
    # worker i listens on 127.0.0.1:(port_base+i); null = no published ports
    port_base: Annotated[int, Meta(ge=1, le=65000)] | None = 8080

    def __post_init__(self) -> None:
        with _Field("memlock_limit"):
            if self.memlock_limit != "unlimited":
                parse_size(self.memlock_limit)
        for name in ("store", "store_target", "shim"):
            v = getattr(self, name)
            if v is not None and not v.startswith("/"):
                raise FieldError(name, f"expected an absolute path, got {v!r}")
        with _Field("tmpfs_size"):
            parse_size(self.tmpfs_size)


# --- the profile ---------------------------------------------------------------------------
class Profile(Section, frozen=True):
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
