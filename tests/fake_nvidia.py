"""An NVIDIA driver layout for fake host trees: /proc/driver/nvidia, the driver's programs and
the packaged nvidia-persistenced unit, laid out like a real install (Debian/Ubuntu paths)."""

from __future__ import annotations

import os
from pathlib import Path

from hosttune.host.gpu.fake import MODELS, FakeNvml
from tests.fakehost import w
from tests.gpuhost import NVIDIA_PARAMS_570

BOOT_ID = "5b4c3d2e-1f00-4a5b-9c8d-7e6f5a4b3c2d"

# What the driver packages ship (NVIDIA's sample unit; Ubuntu's nvidia-compute-utils adds
# --no-persistence-mode).
VENDOR_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target
StopWhenUnneeded=true
Before=systemd-backlight@backlight:nvidia_0.service

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user {user}{no_pm} --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""

# The seed's hand-made MPS unit: a pipe in ExecStop and pipes under /tmp.
SEED_MPS_UNIT = """[Unit]
Description=NVIDIA MPS Control Daemon
After=nvidia-persistenced.service

[Service]
Type=forking
Environment="CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps"
Environment="CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-log"
ExecStart=/usr/bin/nvidia-cuda-mps-control -d
ExecStop=/usr/bin/echo quit | /usr/bin/nvidia-cuda-mps-control
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def add_nvidia(root: Path, models: list[str], *, vendor_unit_user: str | None = "nvpd",
               accounts: tuple[str, ...] = (), persistenced: bool = True,
               mps_control: bool = True, seed_mps_unit: bool = False,
               vendor_no_pm: bool = False) -> Path:
    """Add the driver layout for ``models`` (fake.MODELS keys) to a tree.
    ``vendor_unit_user``: the --user of the packaged unit (None: no packaged unit);
    ``accounts``: extra /etc/passwd entries."""
    w(root, "/proc/driver/nvidia/version",
      "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build\n"
      "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    # the whole parameter list a real driver exports (the modprobe tunable checks names in it)
    w(root, "/proc/driver/nvidia/params",
      "".join(f"{k}: {v}\n" for k, v in NVIDIA_PARAMS_570.items()))
    fake = FakeNvml(models, root=True)
    for g in fake.gpus:
        bus = g.bus_id[4:].lower()  # /proc uses the short domain form: 0000:01:00.0
        w(root, f"/proc/driver/nvidia/gpus/{bus}/information",
          f"Model: \t\t {g.model.name}\nIRQ:   \t\t {180 + g.index}\n"
          f"GPU UUID: \t {g.uuid}\nVideo BIOS: \t 98.02.2e.00.0b\nBus Type: \t PCIe\n"
          f"Device Minor: \t {g.index}\nBus Location: \t {bus}\n")
    w(root, "/proc/sys/kernel/random/boot_id", BOOT_ID + "\n")
    programs = ["nvidia-smi"] + (["nvidia-persistenced"] if persistenced else []) + (
        ["nvidia-cuda-mps-control"] if mps_control else [])
    for prog in programs:
        w(root, f"/usr/bin/{prog}", "#!/bin/sh\nexit 0\n", mode=0o755)
    if vendor_unit_user is not None and persistenced:
        w(root, "/lib/systemd/system/nvidia-persistenced.service",
          VENDOR_UNIT.format(user=vendor_unit_user,
                             no_pm=" --no-persistence-mode" if vendor_no_pm else ""))
    if accounts:
        passwd = root / "etc/passwd"
        text = passwd.read_text()
        for i, a in enumerate(accounts):
            text += f"{a}:x:{120 + i}:{120 + i}:NVIDIA Persistence Daemon:/nonexistent:" \
                    "/usr/sbin/nologin\n"
        passwd.write_text(text)
    if seed_mps_unit:
        w(root, "/etc/systemd/system/nvidia-mps.service", SEED_MPS_UNIT)
    assert all(m in MODELS for m in models)
    os.makedirs(root / "run", exist_ok=True)
    return root
