"""NVIDIA kernel-module facts and modprobe.d syntax: pure parsers, a linter the doctor reuses,
and the table of known / removed / security-relevant driver options.

Sources: open-gpu-kernel-modules src/nvidia/arch/nvalloc/unix/include/nv-reg.h (the option
list; each ``NVreg_<Name>`` module parameter is the registry key ``<Name>`` printed in
/proc/driver/nvidia/params), modprobe.d(5) (syntax), the 570.86.15 release notes (TCEBypassMode
removal).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from hosttune.host.core import Host

# The nvidia.ko options as of the 570-595 drivers (nv-reg.h). Used only when no installed
# driver can be asked (an image built before the driver, a --root tree without it).
KNOWN_NVIDIA_OPTIONS: frozenset[str] = frozenset(f"NVreg_{n}" for n in (
    "ResmanDebugLevel", "RmLogonRC", "ModifyDeviceFiles", "DeviceFileUID", "DeviceFileGID",
    "DeviceFileMode", "InitializeSystemMemoryAllocations", "UsePageAttributeTable",
    "RegisterForACPIEvents", "EnablePCIeGen3", "EnableMSI", "EnableStreamMemOPs",
    "RestrictProfilingToAdminUsers", "PreserveVideoMemoryAllocations",
    "EnableS0ixPowerManagement", "S0ixPowerManagementVideoMemoryThreshold",
    "DynamicPowerManagement", "DynamicPowerManagementVideoMemoryThreshold",
    "EnableGpuFirmware", "EnableGpuFirmwareLogs", "OpenRmEnableUnsupportedGpus",
    "EnableUserNUMAManagement", "MemoryPoolSize", "KMallocHeapMaxSize", "VMallocHeapMaxSize",
    "IgnoreMMIOCheck", "NvLinkDisable", "EnablePCIERelaxedOrderingMode", "RegisterPCIDriver",
    "EnableDbgBreakpoint", "EnableResizableBar", "DmaRemapPeerMmio", "ImexChannelCount",
    "CreateImexChannel0", "GrdmaPciTopoCheckOverride", "RegistryDwords",
    "RegistryDwordsPerDevice", "RmMsg", "GpuBlacklist", "TemporaryFilePath", "ExcludedGpus",
))
# Other modules (nvidia_modeset, nvidia_uvm) are checked only against an installed driver.
KNOWN_MODULE_OPTIONS: dict[str, frozenset[str]] = {
    "nvidia": KNOWN_NVIDIA_OPTIONS,
    "nvidia_drm": frozenset({"modeset", "fbdev"}),
}

# Options that do not exist (any more), with the reason shown when a profile asks for them.
REMOVED_OPTIONS: dict[str, str] = {
    "NVreg_TCEBypass": (
        "no such nvidia option. The closest, NVreg_TCEBypassMode, applied to IBM POWER only "
        "(TCE is the POWER IOMMU) and was removed in driver 570.86.15; on x86 it never did "
        "anything"),
    "NVreg_TCEBypassMode": (
        "IBM POWER only (TCE is the POWER IOMMU); removed in driver 570.86.15"),
}

# Registry keys printed under another name in /proc/driver/nvidia/params (nv-reg.h
# NV_DEFINE_PARAMS_TABLE_ENTRY_CUSTOM_NAME).
PARAMS_ALIASES = {"RmProfilingAdminOnly": "RestrictProfilingToAdminUsers"}


def module_key(name: str) -> str:
    """modprobe treats '-' and '_' in module names alike; /sys/module uses '_'."""
    return name.replace("-", "_")


# --- /proc/driver/nvidia/params ----------------------------------------------------------------
def parse_nvidia_params(text: str) -> dict[str, str]:
    """'Name: value' lines -> {"NVreg_Name": value}; string values lose their quotes."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            continue
        name = PARAMS_ALIASES.get(name.strip(), name.strip())
        v = value.strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        out[f"NVreg_{name}"] = v
    return out


def parse_kernel_uint(text: str) -> int | None:
    """Parse like the kernel's kstrtouint(s, 0): 0x.. hex, leading 0 octal, else decimal."""
    s = text.strip()
    try:
        if s.lower().startswith("0x"):
            return int(s[2:], 16)
        if len(s) > 1 and s.startswith("0"):
            return int(s[1:], 8)
        return int(s, 10)
    except ValueError:
        return None


def same_value(configured: str, active: str) -> bool:
    """Does an active parameter value equal the configured one? Numbers compare by value
    (DeviceFileMode=0660 is printed as 432), bools as Y/N/1/0, strings literally."""
    a, b = parse_kernel_uint(configured), parse_kernel_uint(active)
    if a is not None and b is not None:
        return a == b
    truth = {"y": "1", "n": "0", "1": "1", "0": "0"}
    ca, cb = truth.get(configured.strip().lower()), truth.get(active.strip().lower())
    if ca is not None and cb is not None:
        return ca == cb
    return configured.strip() == active.strip()


# --- modprobe.d ---------------------------------------------------------------------------------
class ModprobeLine(msgspec.Struct, frozen=True):
    lineno: int
    command: str  # options | install | remove | blacklist | softdep | alias
    module: str
    args: tuple[str, ...]  # the words after the module name


def parse_modprobe_conf(text: str) -> list[ModprobeLine]:
    """modprobe.d(5): one command per line, '\\' continues a line, '#' starts a comment only
    at the beginning of a line - a '#' later on is just another word."""
    out: list[ModprobeLine] = []
    buf = ""
    start = 0
    for i, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = i
        if raw.endswith("\\"):
            buf += raw[:-1] + " "
            continue
        line = (buf + raw).strip()
        buf = ""
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=False, posix=True)
        except ValueError:
            words = line.split()
        if len(words) < 2:
            out.append(ModprobeLine(start, words[0] if words else "", "", ()))
            continue
        out.append(ModprobeLine(start, words[0], module_key(words[1]), tuple(words[2:])))
    return out


def split_option(word: str) -> tuple[str, str]:
    name, _, value = word.partition("=")
    return name, value


class ModprobeFinding(msgspec.Struct, frozen=True):
    lineno: int
    message: str
    severity: str = "error"  # error | warning


def lint_modprobe_conf(text: str,
                       known: Mapping[str, set[str] | frozenset[str]] | None = None,
                       ) -> list[ModprobeFinding]:
    """Mistakes in a modprobe.d file: trailing comments (their words become bogus parameters),
    unknown or removed options, security-relevant values. ``known`` maps a module to its
    parameter names (default: hosttune's table)."""
    if known is None:
        known = KNOWN_MODULE_OPTIONS
    out: list[ModprobeFinding] = []
    for ln in parse_modprobe_conf(text):
        if ln.command != "options":
            continue
        for idx, word in enumerate(ln.args):
            if word.startswith("#"):
                rest = " ".join(ln.args[idx:])
                out.append(ModprobeFinding(ln.lineno, (
                    f"trailing comment {rest!r}: modprobe.d has no trailing comments; these "
                    f"words are passed to {ln.module} as parameters (put comments on their own "
                    "line)")))
                break
            name, value = split_option(word)
            if name in REMOVED_OPTIONS:
                out.append(ModprobeFinding(ln.lineno, f"{ln.module} {name}: "
                                           f"{REMOVED_OPTIONS[name]}"))
                continue
            names = known.get(ln.module)
            if names is not None and name not in names:
                out.append(ModprobeFinding(ln.lineno, f"{ln.module} has no parameter {name}"))
                continue
            out.extend(ModprobeFinding(ln.lineno, f"{ln.module} {name}={value}: {note}",
                                       "warning")
                       for note in security_notes(ln.module, name, value))
    return out


# --- security and behaviour notes ------------------------------------------------------------
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def security_notes(module: str, name: str, value: str) -> list[str]:
    """Why an option value deserves a second look (empty when it does not)."""
    notes: list[str] = []
    if module_key(module) != "nvidia":
        return notes
    v = value.strip().strip('"')
    if name == "NVreg_TemporaryFilePath":
        p = v.rstrip("/") or "/"
        if any(p == d or p.startswith(d + "/") for d in WORLD_WRITABLE_DIRS):
            notes.append(
                f"{p} is (under) a world-writable directory: VRAM contents are saved there on "
                "suspend; use a root-only directory on a disk-backed filesystem with room for "
                "all video memory (a tmpfs /tmp holds it in RAM)")
    elif name == "NVreg_RestrictProfilingToAdminUsers" and parse_kernel_uint(v) == 0:
        notes.append("lets every user read GPU performance counters (a side channel: "
                     "CVE-2018-6260); keep the default 1 unless profiling users need it")
    elif name == "NVreg_DeviceFileMode":
        mode = parse_kernel_uint(v)
        if mode is not None and mode & 0o007:
            notes.append(f"mode {mode:o} lets every local user open /dev/nvidia*; use 0660 "
                         "with NVreg_DeviceFileGID of a GPU group")
    elif name == "NVreg_ModifyDeviceFiles" and parse_kernel_uint(v) == 0:
        notes.append("the driver will not fix /dev/nvidia* ownership/modes; whoever creates "
                     "the nodes decides who can use the GPU")
    elif name == "NVreg_EnableResizableBar" and parse_kernel_uint(v) == 1:
        notes.append("driver 530+; only useful where the firmware enables Resizable BAR and "
                     "Above-4G decoding")
    elif name == "NVreg_EnableGpuFirmware" and parse_kernel_uint(v) == 0:
        notes.append("GSP firmware is mandatory for the open kernel modules (and Blackwell "
                     "GPUs); 0 is ignored or fails to load there")
    elif name == "NVreg_EnableMSI" and parse_kernel_uint(v) == 0:
        notes.append("disables MSI/MSI-X: one shared legacy interrupt, no per-vector affinity")
    elif name in ("NVreg_RegistryDwords", "NVreg_RegistryDwordsPerDevice"):
        notes.append("raw registry keys are not validated by anyone; document each key")
    return notes


# --- the installed driver ------------------------------------------------------------------
class ModuleOptions(msgspec.Struct, frozen=True):
    module: str
    names: frozenset[str]
    sources: tuple[str, ...]  # where the names came from; () = hosttune's table
    active: dict[str, str]  # current values of the loaded module, when readable
    loaded: bool


def parse_modinfo_params(text: str) -> set[str]:
    """`modinfo -p MODULE`: 'name:description (type)' per line."""
    out: set[str] = set()
    for line in text.splitlines():
        name, sep, _ = line.partition(":")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            out.add(name.strip())
    return out


def module_options(host: Host, module: str) -> ModuleOptions:
    """Parameter names of ``module`` from every source the host offers: `modinfo -p` (not in
    --root mode: commands are not run there), /sys/module/<m>/parameters (only parameters with
    a sysfs mode show up), /proc/driver/nvidia/params (nvidia.ko, current values)."""
    mod = module_key(module)
    names: set[str] = set()
    sources: list[str] = []
    active: dict[str, str] = {}
    if not host.offline and host.which("modinfo"):
        res = host.run(["modinfo", "-p", mod], timeout_s=20)
        if res.returncode == 0 and not res.skipped:
            got = parse_modinfo_params(res.stdout)
            if got:
                names |= got
                sources.append(f"modinfo -p {mod}")
    loaded = host.exists(f"/sys/module/{mod}")
    pdir = f"/sys/module/{mod}/parameters"
    sys_names = host.listdir(pdir)
    if sys_names:
        names |= set(sys_names)
        sources.append(pdir)
        for n in sys_names:
            try:
                val = host.read_value(f"{pdir}/{n}")
            except PermissionError:
                continue
            if val is not None:
                active[n] = val
    if mod == "nvidia":
        try:
            text = host.read_text("/proc/driver/nvidia/params")
        except PermissionError:
            text = None
        if text:
            params = parse_nvidia_params(text)
            names |= set(params)
            active.update(params)
            sources.append("/proc/driver/nvidia/params")
            loaded = True
    if not names:
        names = set(KNOWN_MODULE_OPTIONS.get(mod, frozenset()))
    return ModuleOptions(mod, frozenset(names), tuple(sources), active, loaded)


def driver_version(host: Host) -> str | None:
    """'570.86.15' from /sys/module/nvidia/version or /proc/driver/nvidia/version."""
    v = host.read_value("/sys/module/nvidia/version")
    if v:
        return v
    text = host.read_text("/proc/driver/nvidia/version") or ""
    m = re.search(r"\b(\d{3}\.\d+(?:\.\d+)?)\b", text)
    return m.group(1) if m else None


def version_tuple(v: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in re.split(r"[.\-+]", v):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)
