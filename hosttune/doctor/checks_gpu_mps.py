"""Compute mode vs GPU clients: EXCLUSIVE_PROCESS (live through NVML, or set by nvidia-smi in
a script or unit) with several GPU clients and no MPS daemon to share the GPU.

The rules come from profile.schema (check_exclusive_sharing) and tunables.gpu_common (the
profile's GPU workers): the doctor only finds the hand-made setting and the clients and asks
those rules."""

from __future__ import annotations

from collections.abc import Iterator

from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.doctor.composefiles import compose_gpu_clients
from hosttune.doctor.shellcmds import shell_lines
from hosttune.doctor.smicmds import smi_settings
from hosttune.host.facts import find_pids
from hosttune.host.gpu.nvml import ComputeMode
from hosttune.profile.schema import check_exclusive_sharing
from hosttune.tunables._systemd import find_unit
from hosttune.tunables.gpu_common import gpu_clients

_COMPUTE_NAMES = {"0": ComputeMode.DEFAULT, "default": ComputeMode.DEFAULT,
                  "2": ComputeMode.PROHIBITED, "prohibited": ComputeMode.PROHIBITED,
                  "3": ComputeMode.EXCLUSIVE_PROCESS,
                  "exclusive_process": ComputeMode.EXCLUSIVE_PROCESS}



def _mps_running(ctx: DoctorContext) -> bool:
    host = ctx.host
    if find_pids(host, "nvidia-cuda-mps-control") or find_pids(host, "nvidia-cuda-mps-server"):
        return True
    # an enabled unit that starts the control daemon
    for wants in host.glob("/etc/systemd/system/*.wants/*"):
        name = wants.rsplit("/", 1)[-1]
        unit = find_unit(host, name)
        text = (host.read_text(unit) or "") if unit else ""
        if "nvidia-cuda-mps-control" in text:
            return True
    return False



def check_compute_mode(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    exclusive: list[str] = []  # where EXCLUSIVE_PROCESS is set
    nv = host.nvml()
    if nv.available:
        for g in nv.devices():
            r = nv.compute_mode(g)
            if r.ok and r.get() is ComputeMode.EXCLUSIVE_PROCESS:
                exclusive.append(f"live: NVML gpu{g.index} compute mode")
    # and every script/unit that sets it (they set it again whenever they run)
    exclusive += [s.where for s in smi_settings(shell_lines(ctx)) if s.what == "compute"
                  and _COMPUTE_NAMES.get(s.value.lower()) is ComputeMode.EXCLUSIVE_PROCESS]
    if not exclusive:
        return
    clients, names, compose = compose_gpu_clients(ctx)
    source = f"{', '.join(names)} in {compose}"
    if ctx.loaded is not None:
        pc = gpu_clients(ctx.loaded.profile)
        if pc is not None and pc > clients:
            clients, source = pc, "the profile's GPU workers"
    if clients < 2 or _mps_running(ctx):
        return
    try:
        check_exclusive_sharing("exclusive_process", None, clients)
        return
    except ValueError as err:
        why = str(err)
    for where in exclusive:
        yield Finding(
            "gpu.exclusive-without-mps", Severity.ERROR,
            f"EXCLUSIVE_PROCESS with {clients} GPU clients and no MPS", where,
            f"{why} (clients: {source}).",
            "profile key gpu.compute_mode: default (or gpu.mps, which shares the GPU under "
            "EXCLUSIVE_PROCESS)")
