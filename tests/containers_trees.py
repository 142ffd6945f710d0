"""Fake-tree helpers for the container planner tests (additive to tests/fakehost.py)."""

from __future__ import annotations

from pathlib import Path

from tests.fakehost import cpulist, w


def add_nvidia_gpu(root: Path, address: str = "0000:01:00.0", *, numa_node: int = -1,
                   local_cpus: list[int] | None = None, device: str = "0x2b85",
                   pci_class: str = "0x030000") -> Path:
    """An NVIDIA GPU as /sys/bus/pci/devices/<addr>/ shows it (0x2b85: RTX 5090; a datacenter
    part reports class 0x030200, '3D controller'). numa_node -1 is what single-node desktops
    report."""
    base = f"/sys/bus/pci/devices/{address}"
    w(root, f"{base}/vendor", "0x10de\n")
    w(root, f"{base}/device", device + "\n")
    w(root, f"{base}/class", pci_class + "\n")
    w(root, f"{base}/numa_node", f"{numa_node}\n")
    w(root, f"{base}/local_cpulist", cpulist(local_cpus or []) + "\n")
    return root


def add_pci_device(root: Path, address: str, vendor: str, pci_class: str) -> Path:
    base = f"/sys/bus/pci/devices/{address}"
    w(root, f"{base}/vendor", vendor + "\n")
    w(root, f"{base}/class", pci_class + "\n")
    w(root, f"{base}/numa_node", "-1\n")
    w(root, f"{base}/local_cpulist", "\n")
    return root
