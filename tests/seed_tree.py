"""A host tree configured exactly as the seed notes' scripts leave it
(../shared/seed/000_cd39b1017bb15b0f.txt), on the Ryzen 9950X + RTX 5090 box.

Every file below is what the notes' commands write (heredocs copied verbatim, `tee -a`
appends, `sed -i` edits applied to a Debian installer fstab). Runtime files (/proc, /sys) hold
what those commands leave in the kernel until the next reboot."""

from __future__ import annotations

from pathlib import Path

from hosttune.host.gpu.fake import FakeNvml
from tests import fakehost
from tests.fake_nvidia import SEED_MPS_UNIT, add_nvidia
from tests.gpuhost import ryzen_5090

GiB = 1024**3

INSTALLER_FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/nvme0n1p2 during installation
UUID=1111-aaaa /               ext4    errors=remount-ro 0       1
# /boot/efi was on /dev/nvme0n1p1 during installation
UUID=2222-bbbb  /boot/efi       vfat    umask=0077      0       1
# swap was on /dev/nvme0n1p3 during installation
UUID=3333-cccc none            swap    sw              0       0
# hot-swap bay for model archives
UUID=5555-eeee /mnt/hotswap-models ext4 defaults,nofail 0 2
"""

SYSCTL_BLOCK = """\
# AI Workstation Optimizations
# AMD Ryzen 9950X + 128GB RAM

# Huge Pages: 90GB for 3x 30GB models
vm.nr_hugepages = 46080

# Memory Management
vm.swappiness = 0              # Disable swapping (swap is off)
vm.zone_reclaim_mode = 0       # Single NUMA node optimization
vm.overcommit_memory = 1       # Allow memory overcommit

# Cache and I/O Tuning
vm.vfs_cache_pressure = 50     # Favor application memory
vm.dirty_ratio = 5              # Aggressive writeback
vm.dirty_background_ratio = 2  # Background writeback
"""

CPUFREQ_UNIT = """\
[Unit]
Description=Set CPU Governor to Performance
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/bash -c 'echo performance > /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor'
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

PERSISTENCED_UNIT = """\
[Unit]
Description=NVIDIA Persistence Daemon
After=multi-user.target

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=multi-user.target
"""

GPU_CLOCKS_UNIT = """\
[Unit]
Description=Lock GPU Clocks for AI Inference
After=nvidia-persistenced.service

[Service]
Type=oneshot
ExecStart=/bin/bash -c '\\
    nvidia-smi -pm 1 && \\
    nvidia-smi -pl 600 && \\
    nvidia-smi -lgc 2400,2550 && \\
    nvidia-smi -lmc 3002'
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

MODPROBE = """\
# RTX 5090 AI Inference Optimizations
options nvidia NVreg_PreserveVideoMemoryAllocations=1  # Preserve VRAM across suspend
options nvidia NVreg_TemporaryFilePath=/var/tmp        # Fast temp storage
options nvidia NVreg_EnableResizableBar=1              # Enable Resizable BAR
options nvidia NVreg_EnableGpuFirmware=1               # Enable GSP firmware
options nvidia NVreg_TCEBypass=1                       # Bypass IOMMU for performance
options nvidia NVreg_UsePageAttributeTable=1           # Better memory management
"""

IRQ_SCRIPT = """\
#!/bin/bash
GPU_IRQS=$(cat /proc/interrupts | grep -E "nvidia|gpu" | awk '{print $1}' | tr -d ':')
for irq in $GPU_IRQS; do
    echo f0000000 > /proc/irq/$irq/smp_affinity 2>/dev/null
done
"""

ENVIRONMENT_ADD = """\
# CUDA Optimizations
CUDA_CACHE_DISABLE=0
CUDA_CACHE_PATH=/tmp/cuda_cache
CUDA_CACHE_MAXSIZE=2147483648
CUDA_DEVICE_ORDER=PCI_BUS_ID
CUDA_LAUNCH_BLOCKING=0
CUDA_MODULE_LOADING=LAZY
"""

# the seed's hand-made MPS unit (pipes in ExecStop, pipe dirs under /tmp)
MPS_UNIT = SEED_MPS_UNIT

GRUB_DEFAULT = """\
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet nvidia-drm.modeset=1 pcie_aspm=off rcutree.rcu_idle_gp_delay=1"
GRUB_CMDLINE_LINUX=""
"""

COMPOSE = """\
services:
  llama-cpu-0:
    image: llama-cpp:cpu
    cpuset: "0-7"
    mem_limit: 32g
    ulimits:
      memlock:
        soft: -1
        hard: -1
    environment:
      MODEL_PATH: /hugepages/model-a.gguf
      LD_PRELOAD: /opt/hugepage_mmap_wrapper.so
    volumes:
      - /mnt/models-hugepages:/hugepages
    read_only: true
  llama-cpu-1:
    image: llama-cpp:cpu
    cpuset: "8-15"
    mem_limit: 32g
    ulimits:
      memlock:
        soft: -1
        hard: -1
    environment:
      MODEL_PATH: /hugepages/model-b.gguf
    volumes:
      - /mnt/models-hugepages:/hugepages
    read_only: true
  llama-cpu-2:
    image: llama-cpp:cpu
    cpuset: "16-23"
    mem_limit: 32g
    ulimits:
      memlock:
        soft: -1
        hard: -1
    environment:
      MODEL_PATH: /hugepages/model-c.gguf
    volumes:
      - /mnt/models-hugepages:/hugepages
    read_only: true
  llama-gpu-0:
    image: llama-cpp:cuda
    cpuset: "24-31"
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["0"]
              capabilities: [gpu]
  llama-gpu-1:
    image: llama-cpp:cuda
    cpuset: "24-31"
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["0"]
              capabilities: [gpu]
"""

COMPOSE_PATH = "/opt/llama/docker-compose.yml"

# /usr/local/bin/optimize-gpu.sh, the notes' "Complete Setup Script" (verbatim)
OPTIMIZE_GPU = """\
#!/bin/bash
set -e

echo "Configuring RTX 5090 for optimal AI inference..."

# Enable persistence mode
sudo nvidia-smi -pm 1

# Set maximum power limit (600W for RTX 5090)
sudo nvidia-smi -pl 600

# Lock GPU clocks for consistency
sudo nvidia-smi -lgc 2400,2550
sudo nvidia-smi -lmc 3002

# Set compute mode
sudo nvidia-smi -c EXCLUSIVE_PROCESS

# Set GPU IRQ affinity
GPU_IRQS=$(cat /proc/interrupts | grep -E "nvidia|gpu" | awk '{print $1}' | tr -d ':')
for irq in $GPU_IRQS; do
    echo f0000000 | sudo tee /proc/irq/$irq/smp_affinity > /dev/null 2>&1
done

# Create CUDA cache directory
sudo mkdir -p /tmp/cuda_cache
sudo chmod 1777 /tmp/cuda_cache

echo "GPU optimization complete!"

# Verify settings
nvidia-smi -q | grep -E "Persistence Mode|Power Limit|Compute Mode"
"""

IRQBALANCE_PID = 812

# What root's shell history holds after following the notes (commands verbatim, `sudo`
# included as typed; heredoc bodies are not history lines)
SEED_HISTORY = """\
sudo swapoff -a
sudo sed -i '/swap/d' /etc/fstab
free -h
echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor
sudo systemctl enable --now cpufreq-performance.service
sudo sysctl vm.nr_hugepages=46080
echo "vm.nr_hugepages=46080" | sudo tee -a /etc/sysctl.conf
sudo mkdir -p /mnt/models-hugepages
sudo mount -t hugetlbfs -o pagesize=2M,size=30G none /mnt/models-hugepages
echo "none /mnt/models-hugepages hugetlbfs pagesize=2M,size=30G 0 0" | sudo tee -a /etc/fstab
sudo sysctl -p
sudo update-grub
"""


def seed_nvml() -> FakeNvml:
    """The RTX 5090 as optimize-gpu.sh leaves it: 600 W, graphics locked to 2400-2550 MHz,
    EXCLUSIVE_PROCESS; `-lmc 3002` was refused (GeForce: NVML_ERROR_NOT_SUPPORTED)."""
    nv = FakeNvml(["rtx5090"], root=True)
    g = nv.gpus[0]
    g.persistence = 1
    g.power_limit_mw = 600_000
    g.locked_graphics = (2400, 2550)
    g.compute_mode = 3  # NVML_COMPUTEMODE_EXCLUSIVE_PROCESS
    return nv


def seed_tree(root: Path) -> Path:
    # the 9950X box with its RTX 5090 (PCI, MSI-X IRQs 180/181 named 'nvidia', the iGPU's
    # amdgpu IRQ 190), the driver and Debian's irqbalance unit
    ryzen_5090(root)
    add_nvidia(root, ["rtx5090"], vendor_unit_user=None)
    b = fakehost.TreeBuilder(root)
    # 1. swapoff -a; sed -i '/swap/d' /etc/fstab  (on the installer's fstab)
    kept = [ln for ln in INSTALLER_FSTAB.splitlines() if "swap" not in ln]
    # 4. hugetlbfs line appended with tee -a
    fstab = "\n".join(kept) + "\n" + \
        "none /mnt/models-hugepages hugetlbfs pagesize=2M,size=30G 0 0\n"
    b.write("/etc/fstab", fstab)
    # the notes' one-off commands were typed at a root shell (scripts are written separately)
    b.write("/root/.bash_history", SEED_HISTORY)
    b.write("/proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
    # the hot-swap disk and the hugetlbfs mount are mounted now
    b.write("/proc/self/mountinfo", (root / "proc/self/mountinfo").read_text()
            + "40 22 259:5 / /mnt/hotswap-models rw,relatime shared:20 - ext4 /dev/sda1 rw\n"
            "41 22 0:50 / /mnt/models-hugepages rw,relatime shared:21 - hugetlbfs none "
            "rw,pagesize=2M,size=32212254720\n")
    # 2. governor: tee wrote every policy; the unit (glob redirect) fails at next boot
    for pol in sorted((root / "sys/devices/system/cpu/cpufreq").iterdir()):
        (pol / "scaling_governor").write_text("performance\n")
        (pol / "energy_performance_preference").write_text("performance\n")
    b.write("/etc/systemd/system/cpufreq-performance.service", CPUFREQ_UNIT)
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    # 3. limits.conf appended; dockerd keeps 8 MiB (fakehost's processes)
    with open(root / "etc/security/limits.conf", "a") as fh:
        fh.write("* soft memlock unlimited\n* hard memlock unlimited\n")
    # 4. huge pages: sysctl vm.nr_hugepages=46080 + tee -a, then the full block appended
    with open(root / "etc/sysctl.conf", "a") as fh:
        fh.write("vm.nr_hugepages=46080\n")
        fh.write(SYSCTL_BLOCK)
    for f in ("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
              "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
              "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
              "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages",
              "/proc/sys/vm/nr_hugepages"):
        b.write(f, "46080\n")
    b.write("/proc/meminfo", fakehost.meminfo(128 * GiB, 30 * GiB, hp_total=46080,
                                              hp_free=46080))
    # `sysctl -p` wrote every line whole; the kernel's integer parser took each number and
    # ignored the trailing comments (checked on a real boot: the values take)
    for k, v in (("vm/swappiness", "0"), ("vm/zone_reclaim_mode", "0"),
                 ("vm/overcommit_memory", "1"), ("vm/vfs_cache_pressure", "50"),
                 ("vm/dirty_ratio", "5"), ("vm/dirty_background_ratio", "2")):
        b.write(f"/proc/sys/{k}", v + "\n")
    # 5-7. GPU units
    b.write("/etc/systemd/system/nvidia-persistenced.service", PERSISTENCED_UNIT)
    b.write("/etc/systemd/system/gpu-clocks.service", GPU_CLOCKS_UNIT)
    b.write("/etc/systemd/system/nvidia-mps.service", MPS_UNIT)
    b.write("/usr/local/bin/optimize-gpu.sh", OPTIMIZE_GPU, 0o755)
    # 8. modprobe options
    b.write("/etc/modprobe.d/nvidia-optimizations.conf", MODPROBE)
    # 9. IRQ affinity script and its runtime effect
    b.write("/usr/local/bin/set-gpu-irq-affinity.sh", IRQ_SCRIPT, 0o755)
    # ... which ran: grep -E "nvidia|gpu" matched the 5090's IRQs and the iGPU's amdgpu one
    for irq in (180, 181, 190):
        b.write(f"/proc/irq/{irq}/smp_affinity", "f0000000\n")
        b.write(f"/proc/irq/{irq}/smp_affinity_list", "28-31\n")
    # irqbalance runs as Debian starts it (no policy script, no banned IRQs)
    b.write(f"/proc/{IRQBALANCE_PID}/comm", "irqbalance\n")
    b.write(f"/proc/{IRQBALANCE_PID}/cmdline", "/usr/sbin/irqbalance\0--foreground\0")
    # 10. CUDA environment, cache dir 1777 under /tmp
    with open(root / "etc/environment", "a") as fh:
        fh.write(ENVIRONMENT_ADD)
    (root / "tmp/cuda_cache").mkdir(parents=True, exist_ok=True)
    (root / "tmp/cuda_cache").chmod(0o1777)
    (root / "tmp").chmod(0o1777)
    # 12. kernel parameters (after the reboot the notes ask for)
    b.write("/etc/default/grub", GRUB_DEFAULT)
    b.write("/proc/cmdline", "BOOT_IMAGE=/vmlinuz-6.8.0 root=UUID=1111-aaaa ro quiet "
            "nvidia-drm.modeset=1 pcie_aspm=off rcutree.rcu_idle_gp_delay=1\n")
    b.write("/proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
    # the containers
    b.write(COMPOSE_PATH, COMPOSE)
    return root
