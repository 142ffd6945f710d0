"""The seed notes' setup commands (../shared/seed/000_cd39b1017bb15b0f.txt, sections 1-12),
copied verbatim as one bash session an operator types at a root shell, for a guest to run.

Left out: what never returns or needs the containers running (`watch -n ...`,
`docker exec ...`) and the status/monitoring scripts. `sudo` is not installed in the guest
image and the session is root already: SUDO_WRAPPER, first on PATH, runs the command as is, so
every line stays as written. Heredoc bodies are the notes' own (the same text tests/seed_tree.py
writes into its fake tree)."""

from __future__ import annotations

from tests.seed_tree import (
    COMPOSE,
    COMPOSE_PATH,
    CPUFREQ_UNIT,
    ENVIRONMENT_ADD,
    GPU_CLOCKS_UNIT,
    IRQ_SCRIPT,
    MODPROBE,
    MPS_UNIT,
    OPTIMIZE_GPU,
    PERSISTENCED_UNIT,
    SYSCTL_BLOCK,
)

# section 12's edit, verbatim (split only to keep source lines short)
GRUB_SED = ("sudo sed -i 's/GRUB_CMDLINE_LINUX_DEFAULT=\"\\(.*\\)\"/GRUB_CMDLINE_LINUX_DEFAULT="
            "\"\\1 nvidia-drm.modeset=1 pcie_aspm=off rcutree.rcu_idle_gp_delay=1\"/' "
            "/etc/default/grub")
# `sudo` for a root session in an image without the sudo package: runs the command as is
SUDO_WRAPPER = '#!/bin/sh\nexec "$@"\n'

NOTES = f"""\
# 1. Swap Disabled
sudo swapoff -a
sudo sed -i '/swap/d' /etc/fstab
free -h

# 2. CPU Governor
echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor
sudo tee /etc/systemd/system/cpufreq-performance.service << 'EOF'
{CPUFREQ_UNIT}EOF
sudo systemctl enable --now cpufreq-performance.service
cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor | uniq

# 3. Memory Locking (host side)
sudo tee -a /etc/security/limits.conf << 'EOF'
* soft memlock unlimited
* hard memlock unlimited
EOF

# 4. Huge Pages
sudo sysctl vm.nr_hugepages=46080
echo "vm.nr_hugepages=46080" | sudo tee -a /etc/sysctl.conf
sudo mkdir -p /mnt/models-hugepages
sudo mount -t hugetlbfs -o pagesize=2M,size=30G none /mnt/models-hugepages
echo "none /mnt/models-hugepages hugetlbfs pagesize=2M,size=30G 0 0" | sudo tee -a /etc/fstab
grep "^HugePages" /proc/meminfo

# Complete sysctl.conf Configuration (appended), then applied
sudo tee -a /etc/sysctl.conf << 'EOF'
{SYSCTL_BLOCK}EOF
sudo sysctl -p

# the containers' compose file
sudo mkdir -p {COMPOSE_PATH.rsplit('/', 1)[0]}
sudo tee {COMPOSE_PATH} > /dev/null << 'EOF'
{COMPOSE}EOF

# 5. NVIDIA Driver Persistence Mode
sudo nvidia-smi -pm 1
sudo tee /etc/systemd/system/nvidia-persistenced.service << 'EOF'
{PERSISTENCED_UNIT}EOF
sudo systemctl enable --now nvidia-persistenced.service
nvidia-smi -q | grep "Persistence Mode"

# 6. GPU Power and Clock Management
sudo nvidia-smi -pl 600
sudo nvidia-smi -lgc 2400,2550
sudo nvidia-smi -lmc 3002
sudo tee /etc/systemd/system/gpu-clocks.service << 'EOF'
{GPU_CLOCKS_UNIT}EOF
sudo systemctl enable --now gpu-clocks.service

# 7. GPU Compute Mode
sudo nvidia-smi -c EXCLUSIVE_PROCESS
nvidia-smi --query-gpu=compute_mode --format=csv

# 8. NVIDIA Kernel Module Parameters
sudo tee /etc/modprobe.d/nvidia-optimizations.conf << 'EOF'
{MODPROBE}EOF
sudo update-initramfs -u
sudo modprobe -r nvidia_drm nvidia_modeset nvidia
sudo modprobe nvidia

# 9. GPU IRQ Affinity
GPU_IRQS=$(cat /proc/interrupts | grep -E "nvidia|gpu" | awk '{{print $1}}' | tr -d ':')
for irq in $GPU_IRQS; do
    echo f0000000 | sudo tee /proc/irq/$irq/smp_affinity > /dev/null
done
sudo tee /usr/local/bin/set-gpu-irq-affinity.sh << 'EOF'
{IRQ_SCRIPT}EOF
sudo chmod +x /usr/local/bin/set-gpu-irq-affinity.sh

# 10. CUDA System Environment
sudo tee -a /etc/environment << 'EOF'
{ENVIRONMENT_ADD}EOF
sudo mkdir -p /tmp/cuda_cache
sudo chmod 1777 /tmp/cuda_cache

# 11. NVIDIA MPS (unit written, not enabled: the notes leave the enable commented out)
sudo mkdir -p /tmp/nvidia-mps /tmp/nvidia-log
sudo tee /etc/systemd/system/nvidia-mps.service << 'EOF'
{MPS_UNIT}EOF

# 12. Kernel Boot Parameters
{GRUB_SED}
sudo update-grub

# Complete Setup Script
sudo tee /usr/local/bin/optimize-gpu.sh > /dev/null << 'EOF'
{OPTIMIZE_GPU}EOF
sudo chmod +x /usr/local/bin/optimize-gpu.sh
sudo /usr/local/bin/optimize-gpu.sh
"""

# The second run: what an operator repeats when the setup "did not work" (the appends and
# edits, and the setup script); the one-off module reload and initramfs rebuild are not redone.
RERUN = f"""\
sudo swapoff -a
sudo sed -i '/swap/d' /etc/fstab
sudo tee -a /etc/security/limits.conf << 'EOF'
* soft memlock unlimited
* hard memlock unlimited
EOF
sudo sysctl vm.nr_hugepages=46080
echo "vm.nr_hugepages=46080" | sudo tee -a /etc/sysctl.conf
echo "none /mnt/models-hugepages hugetlbfs pagesize=2M,size=30G 0 0" | sudo tee -a /etc/fstab
sudo tee -a /etc/sysctl.conf << 'EOF'
{SYSCTL_BLOCK}EOF
sudo sysctl -p
sudo tee -a /etc/environment << 'EOF'
{ENVIRONMENT_ADD}EOF
{GRUB_SED}
sudo update-grub
sudo /usr/local/bin/optimize-gpu.sh
"""


# The notes' pool is 46080 pages (90 GiB of a 128 GB box). A guest of 3 GiB given that much
# is not a host to diagnose: the kernel hands over nearly all free memory and the guest
# thrashes (first try here: systemd restarted a unit every 13 s instead of 5 s, and the stage
# had not finished after 15 minutes). The guest runs the same commands with a pool of its
# size; the doctor's "pool short of what boot asked" finding is tested on a tree.
SEED_POOL = "46080"


def for_guest(text: str, pages: int) -> str:
    return text.replace(SEED_POOL, str(pages))
