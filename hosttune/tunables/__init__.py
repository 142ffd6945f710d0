"""Tunable families, one module each. The registry order is the apply order."""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

from hosttune.errors import HostError
from hosttune.tunables.base import Change, Tunable

if TYPE_CHECKING:
    from hosttune.tunables.knob import Knob

# module:Class, in apply order. Runtime settings come after the files that persist them.
_REGISTRY: tuple[str, ...] = (
    "hosttune.tunables.swap:SwapTunable",
    "hosttune.tunables.cpufreq:CpuFreqTunable",
    "hosttune.tunables.sysctl:SysctlTunable",
    "hosttune.tunables.memlock:MemlockTunable",
    "hosttune.tunables.hugepages:HugePagesTunable",
    "hosttune.tunables.hugetlbfs:HugetlbfsTunable",
    # GPU, driver and boot layer
    "hosttune.tunables.gpu_persistence:GpuPersistenceTunable",  # driver kept up first
    "hosttune.tunables.gpu_nvml:GpuTunable",  # power, clocks, compute mode (runtime)
    "hosttune.tunables.gpu_mps:GpuMpsTunable",  # after EXCLUSIVE_PROCESS is set
    "hosttune.tunables.nvidia_modprobe:NvidiaModprobeTunable",
    "hosttune.tunables.kernel_cmdline:KernelCmdlineTunable",
    "hosttune.tunables.cuda_env:CudaEnvTunable",
    "hosttune.tunables.irq_affinity:IrqAffinityTunable",
    "hosttune.tunables.bootunit:BootUnitTunable",
)


@cache
def all_tunables() -> tuple[Tunable, ...]:
    out = []
    for ref in _REGISTRY:
        mod, _, cls = ref.partition(":")
        m = import_module(mod)
        out.append(getattr(m, cls)())
    return tuple(out)


def get_tunable(name: str) -> Tunable:
    for t in all_tunables():
        if t.name == name:
            return t
    raise KeyError(f"no tunable named {name!r}")


def knob_for(change: Change) -> Knob:
    """The knob that reads and writes ``change``'s setting: a generic one by its kind, or
    the family knob its ``params["knob"]`` names."""
    from hosttune.tunables.knob import GENERIC

    if change.kind != "action":
        return GENERIC[change.kind](change)
    name = change.params.get("knob")
    for k in get_tunable(change.tunable).knobs:
        if k.name == name:
            return k(change)
    raise HostError(f"{change.id}: family {change.tunable} has no knob {name!r}")
