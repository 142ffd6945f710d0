"""CPU mask maths against the kernel's format (lib/vsprintf.c bitmap_string via %*pb):
32-bit chunks, most significant first, comma separated; the leading chunk padded to the
width of the bits it holds, every other chunk to 8 hex digits; zero chunks printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hosttune.host.irq import (
    cpus_to_mask,
    explain_mask,
    is_nvidia_action,
    mask_to_cpus,
    parse_interrupts,
)
from hosttune.host.parsers import parse_cpulist


@st.composite
def cpu_sets(draw):
    n = draw(st.integers(min_value=1, max_value=512))
    cpus = draw(st.sets(st.integers(min_value=0, max_value=n - 1), max_size=64))
    return n, sorted(cpus)


@settings(max_examples=400, deadline=None)
@given(cpu_sets())
def test_round_trip_and_kernel_layout(case):
    n, cpus = case
    mask = cpus_to_mask(cpus, n)
    assert mask_to_cpus(mask) == cpus
    groups = mask.split(",")
    assert len(groups) == (n + 31) // 32
    lead_bits = n % 32 or 32
    assert len(groups[0]) == (lead_bits + 3) // 4
    assert all(len(g) == 8 for g in groups[1:])
    assert all(c in "0123456789abcdef" for g in groups for c in g)
    assert int("".join(groups), 16) == sum(1 << c for c in cpus)


@settings(max_examples=200, deadline=None)
@given(cpu_sets())
def test_trimmed_input_is_accepted_like_bitmap_parse(case):
    n, cpus = case
    full = cpus_to_mask(cpus, n)
    trimmed = full.lstrip("0,") or "0"
    assert mask_to_cpus(trimmed) == cpus


@pytest.mark.parametrize(("cpus", "n", "mask"), [
    ([0, 1], 2, "3"),
    ([0], 128, "00000000,00000000,00000000,00000001"),
    (list(range(128)), 128, "ffffffff,ffffffff,ffffffff,ffffffff"),
    ([15, 31], 32, "80008000"),
    ([32], 33, "1,00000000"),
    ([0], 36, "0,00000001"),
    ([], 8, "00"),
    (list(range(24, 32)), 32, "ff000000"),
])
def test_literal_masks(cpus, n, mask):
    assert cpus_to_mask(cpus, n) == mask


def test_seed_mask_is_28_to_31_not_24_to_31():
    assert mask_to_cpus("f0000000") == [28, 29, 30, 31]
    text = explain_mask("f0000000", intended=list(range(24, 32)))
    assert "28-31" in text and "not 24-31" in text and "ff000000" in text


@pytest.mark.parametrize("bad", ["", "xyz", "123456789", "ff,,ff", "0x"])
def test_malformed_masks_refused(bad):
    with pytest.raises(ValueError):
        mask_to_cpus(bad)


def test_cpu_outside_width_refused():
    with pytest.raises(ValueError):
        cpus_to_mask([32], 32)


def test_matches_the_running_kernel():
    """Every IRQ of this machine: our mask of its smp_affinity_list equals what the kernel
    prints in smp_affinity."""
    possible = parse_cpulist(Path("/sys/devices/system/cpu/possible").read_text())
    n = max(possible) + 1
    checked = 0
    for d in Path("/proc/irq").iterdir():
        if not d.name.isdigit():
            continue
        try:
            lst = (d / "smp_affinity_list").read_text()
            mask = (d / "smp_affinity").read_text().strip()
        except OSError:
            continue
        assert cpus_to_mask(parse_cpulist(lst), n) == mask, d
        checked += 1
    assert checked > 0


INTERRUPTS = """\
            CPU0       CPU1       CPU2       CPU3
   0:         44          0          0          0   IO-APIC   2-edge      timer
  16:          0          0          0          0   IO-APIC  16-fasteoi   ehci_hcd:usb1, i801_smbus
 180:     123456          0          0          0   IR-PCI-MSIX-0000:01:00.0    0-edge      nvidia
 190:       4000          0          0          0   IR-PCI-MSI-0000:7c:00.0    0-edge      amdgpu
 NMI:          0          0          0          0   Non-maskable interrupts
"""


def test_parse_interrupts_and_nvidia_names():
    lines = {ln.irq: ln for ln in parse_interrupts(INTERRUPTS)}
    assert set(lines) == {0, 16, 180, 190}
    assert lines[16].actions == ("ehci_hcd:usb1", "i801_smbus")
    assert lines[180].chip == "IR-PCI-MSIX-0000:01:00.0"
    assert lines[180].counts == (123456, 0, 0, 0)
    assert is_nvidia_action("nvidia")
    # the seed's grep -E "nvidia|gpu" would have pinned the 9950X's iGPU too
    assert not is_nvidia_action(lines[190].actions[0])
