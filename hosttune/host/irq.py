"""IRQ affinity maths and discovery of GPU interrupts (pure parsers + small readers).

Mask format: the kernel prints /proc/irq/N/smp_affinity with ``%*pb`` over nr_cpu_ids bits
(lib/vsprintf.c bitmap_string()): 32-bit chunks, most significant first, separated by commas;
every chunk is zero-padded to 8 hex digits except the leading one, which is padded to the
width of the bits it holds (nr_cpu_ids % 32, or 32). Zero chunks are printed, never trimmed:
with 128 possible CPUs, CPU 0 alone reads ``00000000,00000000,00000000,00000001``; with 2
possible CPUs, both CPUs read ``3``. Writing accepts fewer chunks (bitmap_parse()), so a mask
like ``f0000000`` is valid input - it means CPUs 28-31, not 24-31 (that would
be ``ff000000``). ``smp_affinity_list`` takes and prints a cpulist and is what hosttune writes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from hosttune.host.facts import read_cpulist
from hosttune.host.parsers import format_cpulist

if TYPE_CHECKING:
    from hosttune.host.core import Host

CHUNK_BITS = 32
NVIDIA_VENDOR = "0x10de"


# --- mask maths -------------------------------------------------------------------------------
def cpus_to_mask(cpus: list[int] | set[int] | tuple[int, ...], nr_cpu_ids: int) -> str:
    """CPUs -> the mask exactly as /proc/irq/N/smp_affinity prints it on a kernel with
    ``nr_cpu_ids`` possible CPUs."""
    if nr_cpu_ids < 1:
        raise ValueError("nr_cpu_ids must be >= 1")
    value = 0
    for c in cpus:
        if c < 0 or c >= nr_cpu_ids:
            raise ValueError(f"CPU {c} is outside 0-{nr_cpu_ids - 1}")
        value |= 1 << c
    nchunks = (nr_cpu_ids + CHUNK_BITS - 1) // CHUNK_BITS
    lead_bits = nr_cpu_ids % CHUNK_BITS or CHUNK_BITS
    parts: list[str] = []
    for i in range(nchunks - 1, -1, -1):
        chunk = (value >> (i * CHUNK_BITS)) & 0xFFFFFFFF
        width = (lead_bits + 3) // 4 if i == nchunks - 1 else 8
        parts.append(f"{chunk:0{width}x}")
    return ",".join(parts)


_MASK_RE = re.compile(r"^[0-9a-fA-F]{1,8}(,[0-9a-fA-F]{1,8})*$")


def mask_to_cpus(mask: str) -> list[int]:
    """A hex CPU mask (comma-grouped 32-bit chunks, as written to or read from smp_affinity;
    leading chunks may be omitted) -> sorted CPU ids. Raises ValueError on malformed input."""
    s = mask.strip().lower()
    if s.startswith("0x"):
        s = s[2:]
    if not _MASK_RE.match(s):
        raise ValueError(f"not a CPU mask: {mask!r} (hex, 32-bit chunks separated by commas)")
    value = 0
    for chunk in s.split(","):
        value = (value << CHUNK_BITS) | int(chunk, 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def explain_mask(mask: str, intended: list[int] | None = None) -> str:
    """Human explanation of a mask; names the difference from ``intended`` (for the doctor)."""
    cpus = mask_to_cpus(mask)
    text = f"mask {mask} = CPUs {format_cpulist(cpus) or '(none)'}"
    if intended is not None and set(intended) != set(cpus):
        want = cpus_to_mask(intended, max(max(intended, default=0) + 1, 1))
        text += (f", not {format_cpulist(intended)} (that would be {want.lstrip('0') or '0'})")
    return text


def nr_cpu_ids(host: Host) -> int:
    """Number of possible CPU ids: the width of every kernel cpumask."""
    possible = read_cpulist(host, "/sys/devices/system/cpu/possible")
    if possible:
        return max(possible) + 1
    return max(host.facts.cpu_ids, default=0) + 1


# --- /proc/interrupts ---------------------------------------------------------------------------
class InterruptLine(msgspec.Struct, frozen=True):
    irq: int
    counts: tuple[int, ...]  # per online CPU, in /proc/interrupts column order
    chip: str  # e.g. IR-PCI-MSIX-0000:01:00.0
    hwirq: str  # e.g. 0-edge
    actions: tuple[str, ...]  # handler names, e.g. ("nvidia",)


def parse_interrupts(text: str) -> list[InterruptLine]:
    """/proc/interrupts: a header of CPU names, then 'N: counts... chip hwirq-type actions'.

    Only numbered IRQs are returned (NMI, LOC, ... are not IRQs one can pin). Several handlers
    sharing a line are joined with ', '."""
    lines = text.splitlines()
    if not lines:
        return []
    ncpu = len(lines[0].split())
    out: list[InterruptLine] = []
    for line in lines[1:]:
        head, sep, rest = line.partition(":")
        if not sep or not head.strip().isdigit():
            continue
        toks = rest.split()
        counts: list[int] = []
        for t in toks[:ncpu]:
            if not t.isdigit():
                break
            counts.append(int(t))
        tail = toks[len(counts):]
        chip = tail[0] if tail else ""
        hwirq = tail[1] if len(tail) > 1 else ""
        actions = tuple(a.strip() for a in " ".join(tail[2:]).split(",") if a.strip())
        out.append(InterruptLine(int(head), tuple(counts), chip, hwirq, actions))
    return out


def is_nvidia_action(name: str) -> bool:
    """The NVIDIA driver registers its handlers as 'nvidia' (and 'nvidia-*'). A grep for
    'gpu' also catches amdgpu (an integrated AMD GPU, as on a 9950X), which is not ours."""
    return name == "nvidia" or name.startswith("nvidia-")


# --- PCI devices ------------------------------------------------------------------------------
class GpuDevice(msgspec.Struct, frozen=True):
    bdf: str  # 0000:01:00.0
    device_id: str  # 0x2b85
    class_code: str  # 0x030000 (VGA) / 0x030200 (3D controller)
    numa_node: int  # -1 when the platform does not say
    local_cpus: tuple[int, ...]
    msi_irqs: tuple[int, ...]
    legacy_irq: int | None


def is_display_class(class_code: str) -> bool:
    """PCI class 0x03xxxx: display controllers (VGA 0x0300, 3D 0x0302). The HD-audio function
    of a GeForce (0x0403) is NVIDIA too, but not the GPU."""
    return class_code.lower().startswith("0x03")


def nvidia_gpus(host: Host) -> list[GpuDevice]:
    """NVIDIA display-class PCI functions from /sys/bus/pci/devices (the MSI/MSI-X vectors
    appear under msi_irqs/ once a driver has enabled them)."""
    out: list[GpuDevice] = []
    for bdf in host.listdir("/sys/bus/pci/devices"):
        base = f"/sys/bus/pci/devices/{bdf}"
        if (host.read_value(f"{base}/vendor") or "").lower() != NVIDIA_VENDOR:
            continue
        cls = host.read_value(f"{base}/class") or ""
        if not is_display_class(cls):
            continue
        try:
            node = int(host.read_value(f"{base}/numa_node") or "-1")
        except ValueError:
            node = -1
        local = read_cpulist(host, f"{base}/local_cpulist")
        msi = sorted(int(n) for n in host.listdir(f"{base}/msi_irqs") if n.isdigit())
        legacy_s = host.read_value(f"{base}/irq") or ""
        legacy = int(legacy_s) if legacy_s.isdigit() and legacy_s != "0" else None
        out.append(GpuDevice(bdf, host.read_value(f"{base}/device") or "", cls, node,
                             tuple(local), tuple(msi), legacy))
    return out


class GpuIrq(msgspec.Struct, frozen=True):
    irq: int
    device: str  # BDF, or "" when only /proc/interrupts names it
    name: str  # action names from /proc/interrupts


def gpu_irqs(host: Host) -> list[GpuIrq]:
    """IRQs of NVIDIA GPUs: MSI/MSI-X vectors of NVIDIA display devices, plus any IRQ whose
    handler is named 'nvidia' in /proc/interrupts (legacy INTx, or a missing sysfs)."""
    lines = {ln.irq: ln for ln in parse_interrupts(host.read_text("/proc/interrupts") or "")}
    found: dict[int, GpuIrq] = {}
    for dev in nvidia_gpus(host):
        irqs = list(dev.msi_irqs)
        if not irqs and dev.legacy_irq is not None and dev.legacy_irq in lines and any(
                is_nvidia_action(a) for a in lines[dev.legacy_irq].actions):
            irqs = [dev.legacy_irq]
        for n in irqs:
            ln = lines.get(n)
            found[n] = GpuIrq(n, dev.bdf, ",".join(ln.actions) if ln else "")
    for n, ln in lines.items():
        if n not in found and any(is_nvidia_action(a) for a in ln.actions):
            m = re.search(r"([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])", ln.chip)
            found[n] = GpuIrq(n, m.group(1) if m else "", ",".join(ln.actions))
    return [found[n] for n in sorted(found) if host.exists(f"/proc/irq/{n}")]
