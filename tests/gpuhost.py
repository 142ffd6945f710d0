"""Fake GPU hosts: NVIDIA devices under /sys/bus/pci (symlinks into /sys/devices, as the kernel
lays them out), /proc/interrupts and /proc/irq, an NVIDIA driver layout (/proc/driver/nvidia,
/sys/module/nvidia*) and Debian's irqbalance unit. Built on top of tests/fakehost trees."""

from __future__ import annotations

import os
from pathlib import Path

from hosttune.host.irq import cpus_to_mask
from hosttune.host.parsers import format_cpulist
from tests.fakehost import TreeBuilder, epyc_2s, ryzen_9950x

# /lib/systemd/system/irqbalance.service of Debian 12's irqbalance 1.9.2-1 (verbatim)
IRQBALANCE_UNIT = """[Unit]
Description=irqbalance daemon
Documentation=man:irqbalance(1)
Documentation=https://github.com/Irqbalance/irqbalance
ConditionVirtualization=!container
ConditionCPUs=>1

[Service]
EnvironmentFile=-/usr/lib/irqbalance/defaults.env
EnvironmentFile=-/etc/default/irqbalance
ExecStart=/usr/sbin/irqbalance --foreground $IRQBALANCE_ARGS
ReadOnlyPaths=/
ReadWritePaths=/proc/irq
RestrictAddressFamilies=AF_UNIX
RuntimeDirectory=irqbalance/

[Install]
WantedBy=multi-user.target
"""

# /proc/driver/nvidia/params of a 570.86.15 open kernel module (TCEBypassMode already gone)
NVIDIA_PARAMS_570 = {
    "ResmanDebugLevel": "4294967295", "RmLogonRC": "1", "ModifyDeviceFiles": "1",
    "DeviceFileUID": "0", "DeviceFileGID": "0", "DeviceFileMode": "438",
    "InitializeSystemMemoryAllocations": "1", "UsePageAttributeTable": "4294967295",
    "EnableMSI": "1", "EnablePCIeGen3": "0", "MemoryPoolSize": "0", "KMallocHeapMaxSize": "0",
    "VMallocHeapMaxSize": "0", "IgnoreMMIOCheck": "0", "EnableStreamMemOPs": "0",
    "EnableUserNUMAManagement": "1", "NvLinkDisable": "0", "RmProfilingAdminOnly": "1",
    "PreserveVideoMemoryAllocations": "0", "EnableS0ixPowerManagement": "0",
    "S0ixPowerManagementVideoMemoryThreshold": "256", "DynamicPowerManagement": "3",
    "DynamicPowerManagementVideoMemoryThreshold": "200", "RegisterPCIDriver": "1",
    "EnablePCIERelaxedOrderingMode": "0", "EnableResizableBar": "0",
    "EnableGpuFirmware": "18", "EnableGpuFirmwareLogs": "2", "EnableDbgBreakpoint": "0",
    "OpenRmEnableUnsupportedGpus": "1", "DmaRemapPeerMmio": "1", "ImexChannelCount": "2048",
    "CreateImexChannel0": "0", "GrdmaPciTopoCheckOverride": "0", "RegistryDwords": '""',
    "RegistryDwordsPerDevice": '""', "RmMsg": '""', "GpuBlacklist": '""',
    "TemporaryFilePath": '""', "ExcludedGpus": '""',
}


class GpuTree:
    def __init__(self, root: Path, ncpu: int) -> None:
        self.b = TreeBuilder(root)
        self.root = root
        self.ncpu = ncpu
        self.irqs: list[tuple[int, str, str, str]] = []  # irq, chip, hwirq, action

    def pci(self, bdf: str, vendor: str, device: str, cls: str, *, numa_node: int = -1,
            local_cpus: list[int] | None = None, msi: list[int] | None = None,
            chip: str = "IR-PCI-MSIX", action: str = "", port: str = "0000:00:01.1") -> None:
        dom = "pci" + bdf[:7]
        real = f"/sys/devices/{dom}/{port}/{bdf}"
        w = self.b.write
        w(f"{real}/vendor", vendor + "\n")
        w(f"{real}/device", device + "\n")
        w(f"{real}/class", cls + "\n")
        w(f"{real}/numa_node", f"{numa_node}\n")
        cpus = local_cpus if local_cpus is not None else list(range(self.ncpu))
        w(f"{real}/local_cpulist", format_cpulist(cpus) + "\n")
        w(f"{real}/local_cpus", cpus_to_mask(cpus, self.ncpu) + "\n")
        w(f"{real}/irq", f"{(msi or [0])[0]}\n")
        for i, n in enumerate(msi or []):
            w(f"{real}/msi_irqs/{n}", "msix\n" if "MSIX" in chip else "msi\n")
            self.irqs.append((n, f"{chip}-{bdf}", f"{i}-edge", action))
        link = self.root / "sys/bus/pci/devices" / bdf
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(self.root / real.lstrip("/"), link.parent), link)

    def other_irq(self, irq: int, chip: str, hwirq: str, action: str) -> None:
        self.irqs.append((irq, chip, hwirq, action))

    def finish(self) -> None:
        """Write /proc/interrupts and /proc/irq/N for every IRQ (default affinity: all CPUs)."""
        all_cpus = list(range(self.ncpu))
        head = " " * 11 + "".join(f"CPU{i:<8}" for i in range(self.ncpu)).rstrip()
        lines = [head]
        for irq, chip, hwirq, action in sorted(self.irqs):
            counts = "".join(f"{(irq * 7 + c) % 1000:>11}" for c in range(self.ncpu))
            lines.append(f"{irq:>4}:{counts}  {chip}  {hwirq:>8}      {action}".rstrip())
            base = f"/proc/irq/{irq}"
            self.b.write(f"{base}/smp_affinity", cpus_to_mask(all_cpus, self.ncpu) + "\n")
            self.b.write(f"{base}/smp_affinity_list", format_cpulist(all_cpus) + "\n")
            self.b.write(f"{base}/effective_affinity_list", "0\n")
        lines += [" NMI:" + "".join(f"{0:>11}" for _ in all_cpus) + "   Non-maskable interrupts",
                  " LOC:" + "".join(f"{5:>11}" for _ in all_cpus) + "   Local timer interrupts"]
        self.b.write("/proc/interrupts", "\n".join(lines) + "\n")
        self.b.write("/proc/irq/default_smp_affinity", cpus_to_mask(all_cpus, self.ncpu) + "\n")

    def nvidia_driver(self, version: str = "570.86.15",
                      params: dict[str, str] | None = None) -> None:
        p = dict(NVIDIA_PARAMS_570)
        p.update(params or {})
        self.b.write("/proc/driver/nvidia/params", "".join(f"{k}: {v}\n" for k, v in p.items()))
        self.b.write("/proc/driver/nvidia/version", (
            f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build"
            "  (dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 00:00:00 UTC 2025\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"))
        self.b.write("/sys/module/nvidia/version", version + "\n")
        self.b.write("/sys/module/nvidia/refcnt", "2\n")
        # nvidia.ko registers its NVreg_* parameters with sysfs mode 0: no parameters/ dir
        self.b.write("/sys/module/nvidia_drm/parameters/modeset", "N\n", mode=0o400)
        self.b.write("/sys/module/nvidia_drm/parameters/fbdev", "N\n", mode=0o400)

    def irqbalance(self) -> None:
        self.b.write("/lib/systemd/system/irqbalance.service", IRQBALANCE_UNIT)


def ryzen_5090(root: Path, *, driver: bool = True, irqbalance: bool = True) -> Path:
    """The seed's box: 9950X tree + an RTX 5090 at 0000:01:00.0 (two MSI-X vectors, named
    'nvidia'), its HD-audio function at 01:00.1, the CPU's Radeon iGPU (amdgpu) and an NVMe."""
    ryzen_9950x(root)
    g = GpuTree(root, 32)
    g.b.write("/proc/sys/kernel/osrelease", "6.1.0-28-amd64\n")
    g.other_irq(0, "IR-IO-APIC", "2-edge", "timer")
    g.other_irq(9, "IR-IO-APIC", "9-fasteoi", "acpi")
    msi = [180, 181] if driver else []
    g.pci("0000:01:00.0", "0x10de", "0x2b85", "0x030000", msi=msi, action="nvidia")
    g.pci("0000:01:00.1", "0x10de", "0x22e8", "0x040300", msi=[182], chip="IR-PCI-MSI",
          action="snd_hda_intel:card1")
    g.pci("0000:7c:00.0", "0x1002", "0x13c0", "0x030000", msi=[190], chip="IR-PCI-MSI",
          action="amdgpu", port="0000:00:08.1")
    g.pci("0000:02:00.0", "0x144d", "0xa80c", "0x010802", msi=[100, 101], action="nvme0q0",
          port="0000:00:01.2")
    g.finish()
    if driver:
        g.nvidia_driver()
    if irqbalance:
        g.irqbalance()
    return root


def epyc_2h100(root: Path) -> Path:
    """2-socket EPYC tree + two H100 (3D controller, class 0x0302), one per NUMA node."""
    epyc_2s(root)
    g = GpuTree(root, 128)
    g.b.write("/proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
    g.b.write("/etc/os-release", 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n')
    n0 = [c for c in range(128) if (c % 64) < 32]
    n1 = [c for c in range(128) if (c % 64) >= 32]
    g.pci("0000:41:00.0", "0x10de", "0x2330", "0x030200", numa_node=0, local_cpus=n0,
          msi=[200], action="nvidia", port="0000:40:01.1")
    g.pci("0000:c1:00.0", "0x10de", "0x2330", "0x030200", numa_node=1, local_cpus=n1,
          msi=[300], action="nvidia", port="0000:c0:01.1")
    g.finish()
    g.nvidia_driver("575.57.08")
    g.irqbalance()
    return root
