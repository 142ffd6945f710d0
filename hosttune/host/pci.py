"""PCI facts: NVIDIA GPUs and the NUMA node / CPUs they sit next to.

Read from /sys/bus/pci/devices/<addr>/{vendor,class,device,numa_node,local_cpulist}. Only what
placement needs; the NVML gateway knows the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from hosttune.host.parsers import parse_cpulist

if TYPE_CHECKING:
    from hosttune.host.core import Host

NVIDIA_VENDOR = 0x10DE
# PCI base class 0x03 = display controller (0x0300 VGA, 0x0302 3D controller: datacenter GPUs)
DISPLAY_CLASS = 0x03


class PciGpu(msgspec.Struct, frozen=True):
    address: str  # '0000:01:00.0'
    vendor: int
    device: int
    pci_class: int
    numa_node: int  # -1: the firmware did not say (single-node desktops, most VMs)
    local_cpus: tuple[int, ...]


def parse_pci_gpu(address: str, vendor: str | None, pci_class: str | None, device: str | None,
                  numa_node: str | None, local_cpulist: str | None) -> PciGpu | None:
    """One PCI device's sysfs values -> a PciGpu if it is an NVIDIA display/3D controller."""
    try:
        ven = int((vendor or "").strip(), 16)
        cls = int((pci_class or "").strip(), 16)
    except ValueError:
        return None
    if ven != NVIDIA_VENDOR or (cls >> 16) != DISPLAY_CLASS:
        return None
    try:
        dev = int((device or "0").strip(), 16)
    except ValueError:
        dev = 0
    try:
        node = int((numa_node or "-1").strip())
    except ValueError:
        node = -1
    try:
        cpus = tuple(parse_cpulist(local_cpulist or ""))
    except ValueError:
        cpus = ()
    return PciGpu(address, ven, dev, cls, node, cpus)


def read_gpus(host: Host) -> tuple[PciGpu, ...]:
    """NVIDIA GPUs in PCI bus order - the order nvidia-smi and CUDA_DEVICE_ORDER=PCI_BUS_ID use
    for indices."""
    out: list[PciGpu] = []
    base = "/sys/bus/pci/devices"
    for addr in host.listdir(base):
        d = f"{base}/{addr}"
        gpu = parse_pci_gpu(addr, host.read_value(f"{d}/vendor"), host.read_value(f"{d}/class"),
                            host.read_value(f"{d}/device"), host.read_value(f"{d}/numa_node"),
                            host.read_value(f"{d}/local_cpulist"))
        if gpu is not None:
            out.append(gpu)
    return tuple(sorted(out, key=lambda g: g.address))
