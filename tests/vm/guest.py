"""Real-boot guests: a Debian 12 image with systemd as PID 1, booted under QEMU.

API (everything a scenario needs; nothing here knows about hosttune's profiles):

    base = base_rootfs()                  # cached mmdebstrap tarball (built once per key)
    wh = wheelhouse(dir)                  # this checkout + its deps as wheels (pip wheel)
    tree = Tree.extract(base, dir)        # a rootfs directory to prepare before the first boot
    tree.install_hosttune(wh)             # venv /opt/hosttune in the tree, pip --no-index
    disk = tree.make_disk(path)           # ext4 image (mkfs.ext4 -d), or partitioned=True
    g = Guest(disk, kernel=..., logs=dir) # one disk that persists across boots
    r = g.boot(stage_script)              # one QEMU run: boot, run the stage, power off
    r.rc, r.out["audit.json"]             # stage exit status and files from /ht/out
    g.read("/etc/fstab")                  # any file, read back from the image with debugfs
    g.boot(stage, cut_at="HT-STEP 3")     # power cut: SIGKILL QEMU when a console line shows

How a stage gets in and results get out, without loop mounts: the stage (a bash script plus
any files) is a tar archive attached as a second, read-only virtio disk; the image's
ht-stage.service (installed by Tree.prepare) untars /dev/vdb, runs ./stage.sh after
multi-user.target with its output on the console and in /ht/out/stage.log, writes /ht/out/rc,
writes /ht/out as a tar archive onto a third, raw disk (/dev/vdc; a stage calls ``ht_flush``
to do the same before a power cut: a cut file system's journal is not replayed by debugfs),
and powers off. Files of the guest's own disk are read back with debugfs (``Guest.read``,
``Disk.rdump``) after a clean power-off.

Clear failures: every boot's console goes to a log file kept under the log directory; a boot
that does not print the stage probe within ``boot_timeout_s`` or does not power off within
``stage_timeout_s`` is killed and raises GuestError with the console's last lines.

Serialisation: ``Guest.boot`` takes the VM lock (HOSTTUNE_VM_LOCK, default /tmp/ht-vm.lock)
around every QEMU run: one guest at a time per lock. CI runs two lanes of scenarios, each with
its own lock, so two guests run at once there (one per host core). Image builds take the
cache's own build lock (``base_rootfs``), shared by every lane.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HOSTTUNE_VM_CACHE", "/var/cache/hosttune-vm"))
LOCK = os.environ.get("HOSTTUNE_VM_LOCK", "/tmp/ht-vm.lock")
RELEASE = "bookworm"
# What the guest needs: systemd as PID 1 (+ dbus for systemctl, udev for devices), the cloud
# kernel and its initrd (virtio built for direct kernel boot), Python for hosttune, the container
# runtimes whose LimitMEMLOCK hosttune sets, grub-pc for the GRUB scenario, and the tools a stage
# uses (procps: sysctl/ps, kmod, e2fsprogs, passwd: groupadd/getent), hwloc's lstopo (the
# -nox build: the same XML without cairo and X11) and docker-compose (the consumer of
# `hosttune containers compose`) for the topology scenario.
PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64",
            "python3-venv", "docker.io", "busybox-static", "grub-pc", "passwd", "procps",
            "kmod", "e2fsprogs", "util-linux", "hwloc-nox", "docker-compose",
            "openssh-server")
# openssh-server is for the fleet scenario (Ansible over SSH): in the one image every scenario
# shares (a second image cost CI a second mmdebstrap run), disabled; Tree.ssh_host enables it.
# Bump when the build recipe below changes (part of the cache key with the packages/release).
RECIPE = "3"
PROBE = "HT-PROBE stage starting"
DONE_RE = re.compile(r"HT-STAGE-DONE rc=(\d+)")
GUEST_VENV = "/opt/hosttune"
MEM_MB = int(os.environ.get("HOSTTUNE_VM_MEM_MB", "3072"))
# Kernel parameters every direct-kernel boot gets, for TCG's sake (each measured on a probe boot
# here, boot to stage plus a hosttune apply/rollback, about 22% less wall time all together):
# - init_on_alloc=0: Debian's kernels are built with INIT_ON_ALLOC_DEFAULT_ON, so every page is
#   zeroed as it is allocated; under TCG that made the inference pool's allocation 4.8 of
#   apply's 11 s (hugetlb zeroes a page again at its first fault anyway).
# - loglevel=4: every console byte is an emulated UART write; the kernel's info messages go to
#   the journal only (warnings, errors and panics still reach the console), while systemd's
#   status lines stay on it: a boot that hangs still shows where.
# - mitigations=off: retpolines and RSB filling are pure cost in an emulated CPU.
# None of these is something hosttune tunes or audits (kernel_cmdline rows name only the
# profile's own parameters).
FAST_CMDLINE = "init_on_alloc=0 loglevel=4 mitigations=off"


def kernel_append(root: str, extra: str = "") -> str:
    """The kernel command line of a direct-kernel boot (-append)."""
    return " ".join(filter(None, [f"root={root} rw console=ttyS0 panic=-1", FAST_CMDLINE,
                                  extra.strip()]))


# dockerd without iptables rules or the docker0 bridge: it runs a dozen iptables commands at
# every start otherwise (7.8 of a boot's 23 s went to docker.service; 4.2 s with this).
# Containers in the scenarios run FROM scratch with no network they would need.
DOCKER_DAEMON_JSON = '{"iptables": false, "ip6tables": false, "bridge": "none"}\n'
RESULTS_MB = 64  # the results disk (/dev/vdc): a tar of /ht/out


class GuestError(RuntimeError):
    """A boot or an image step failed; the message carries the console tail / tool output."""


class QemuCrashed(GuestError):
    """QEMU died by a signal before the guest wrote a line to its console."""


_held = 0  # nesting depth of vm_lock in this process (flock on a second fd would block)


@contextlib.contextmanager
def vm_lock() -> Iterator[None]:
    """One guest (or image build) at a time on this machine; re-entrant in one process, so a
    scenario can hold it across all its boots and nobody else's boot lands between them."""
    global _held
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held = 1
        yield
    finally:
        _held = 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _run(argv: list[str], *, timeout: float = 600, cwd: str | Path | None = None,
         env: dict[str, str] | None = None) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                           env=env, check=False)
    except subprocess.TimeoutExpired as err:
        raise GuestError(f"{argv[0]} timed out after {timeout:.0f} s") from err
    if p.returncode != 0:
        raise GuestError(f"{' '.join(argv[:6])} ... failed (exit {p.returncode}):\n"
                         f"{(p.stdout + p.stderr)[-3000:]}")
    return p.stdout


def missing_tools() -> list[str]:
    """Host programs the harness needs (Debian: qemu-system-x86 mmdebstrap e2fsprogs)."""
    need = ["qemu-system-x86_64", "mmdebstrap", "debugfs", "mkfs.ext4", "mkswap", "chroot"]
    return [t for t in need if shutil.which(t) is None
            and not os.path.exists(f"/usr/sbin/{t}") and not os.path.exists(f"/sbin/{t}")]


def _tool(name: str) -> str:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), name)


# --- the cached base image ---------------------------------------------------------------------
def image_key(packages: tuple[str, ...] = PACKAGES) -> str:
    h = hashlib.sha256(f"{RELEASE}|{','.join(sorted(packages))}|{RECIPE}".encode())
    return f"{RELEASE}-{h.hexdigest()[:12]}"


def base_rootfs(timeout_s: float = 1800, packages: tuple[str, ...] = PACKAGES) -> Path:
    """The Debian rootfs tarball for this package list, built with mmdebstrap once and cached
    under CACHE (outside the repository). Concurrent callers (two CI lanes) wait on the cache's
    build lock, which is not the VM lock: lanes hold different VM locks."""
    d = CACHE / image_key(packages)
    tar = d / "rootfs.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    with _flocked(CACHE / ".build.lock"):  # one build per cache, whatever the lane
        if tar.exists():
            return tar
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "rootfs.tar.tmp"
        hooks = [
            '--customize-hook=echo htguest > "$1/etc/hostname"',
            # No daily jobs racing a stage, no login prompt on the console we parse.
            '--customize-hook=rm -f "$1"/etc/systemd/system/timers.target.wants/*',
            '--customize-hook=chroot "$1" systemctl mask serial-getty@ttyS0.service '
            "getty@tty1.service",
            '--customize-hook=chroot "$1" systemctl disable ssh.service',
            # An initramfs with only the modules a virtio guest needs to mount its root
            # (MODULES=list) instead of Debian's MODULES=most: 6.7 MB instead of 16 MB to unpack
            # at every boot, and `update-initramfs -u` (the seed notes run it) takes 35 s under
            # TCG instead of 150 s. ext4 and crc32c are built into the cloud kernel.
            '--customize-hook=echo MODULES=list > '
            '"$1/etc/initramfs-tools/conf.d/hosttune-vm.conf"',
            '--customize-hook=printf "virtio_pci\\nvirtio_blk\\n" >> '
            '"$1/etc/initramfs-tools/modules"',
            '--customize-hook=chroot "$1" update-initramfs -u',
        ]
        _run([_tool("mmdebstrap"), "--quiet", "--variant=minbase", "--format=tar",
              f"--include={','.join(packages)}", *hooks, RELEASE, str(tmp)],
             timeout=timeout_s)
        os.replace(tmp, tar)
        (d / "packages.txt").write_text("\n".join(packages) + "\n")
    return tar


# --- hosttune as wheels -------------------------------------------------------------------------
def _checkout_copy(dest: Path) -> Path:
    """The working tree as git sees it (tracked + untracked, not ignored): what is under test,
    uncommitted edits included, without build debris written into the checkout."""
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).split("\0")
    for f in filter(None, files):
        src = REPO / f
        if not src.is_file():
            continue
        dst = dest / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dest


def wheelhouse(dest: Path) -> Path:
    """hosttune built from this checkout plus its runtime dependencies, as wheels (pip wheel).
    The guest installs from here with --no-index, so it runs exactly the code under test."""
    dest.mkdir(parents=True, exist_ok=True)
    src = _checkout_copy(dest.parent / "src")
    _run(["python3", "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
          "-w", str(dest), str(src)], timeout=900)
    if not list(dest.glob("hosttune-*.whl")):
        raise GuestError(f"pip wheel left no hosttune wheel in {dest}")
    return dest


# --- a rootfs tree ------------------------------------------------------------------------------
SETTLE_S = 300  # how long the runner waits for multi-user.target before it runs the stage
STAGE_RUNNER = f"""#!/bin/bash
# ht-stage: run the stage attached as /dev/vdb (a tar archive), then power off.
mkdir -p /run/ht /ht
rm -rf /ht/out && mkdir -p /ht/out
# results: a tar archive on the raw third disk, durable once written (a power cut may follow)
ht_flush() {{ tar -cf /dev/vdc -C /ht/out . && sync; }}
export -f ht_flush
for _ in $(seq {SETTLE_S}); do systemctl is-active -q multi-user.target && break; sleep 1; done
systemctl is-active -q multi-user.target || echo "HT-WARN multi-user.target not reached"
echo "{PROBE}"
if tar -xf /dev/vdb -C /run/ht 2>/ht/out/untar.err; then
  cd /run/ht && PATH={GUEST_VENV}/bin:$PATH bash ./stage.sh > >(tee /ht/out/stage.log) 2>&1
  rc=$?
else
  rc=125
fi
echo "$rc" > /ht/out/rc
ht_flush
echo "HT-STAGE-DONE rc=$rc"
systemctl poweroff --no-block
"""

# The stage is started by its own job (a trigger queued from multi-user.target), not as part
# of the boot transaction: a unit in a restart loop keeps multi-user.target from ever being
# reached, and a stage ordered after it would never run (the runner waits a bounded time).
STAGE_UNIT = """[Unit]
Description=hosttune VM test stage
After=basic.target docker.service containerd.service hosttune-boot.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ht-stage
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
"""

TRIGGER_UNIT = """[Unit]
Description=hosttune VM test stage trigger
ConditionPathExists=/dev/vdb

[Service]
Type=oneshot
ExecStart=/bin/systemctl start --no-block ht-stage.service

[Install]
WantedBy=multi-user.target
"""


@dataclass
class Tree:
    """A guest root file system as a directory, prepared on the host before the first boot."""

    path: Path

    @classmethod
    def extract(cls, tar: Path, dest: Path) -> Tree:
        dest.mkdir(parents=True, exist_ok=True)
        _run(["tar", "-xf", str(tar), "-C", str(dest), "--numeric-owner"], timeout=600)
        t = cls(dest)
        t.prepare()
        return t

    def prepare(self) -> None:
        """Install the stage runner (harness code, so not part of the cached image), dockerd's
        daemon.json (DOCKER_DAEMON_JSON) and a
        fixed machine-id: /etc must not change between boots for reasons of its own (mmdebstrap
        leaves it empty, and systemd commits a new one at first boot)."""
        self.write("/etc/machine-id", hashlib.sha256(b"htguest").hexdigest()[:32] + "\n", 0o444)
        sbin = self.path / "usr/local/sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        (sbin / "ht-stage").write_text(STAGE_RUNNER)
        (sbin / "ht-stage").chmod(0o755)
        self.write("/etc/docker/daemon.json", DOCKER_DAEMON_JSON)
        self.write("/etc/systemd/system/ht-stage.service", STAGE_UNIT)
        self.write("/etc/systemd/system/ht-stage-trigger.service", TRIGGER_UNIT)
        wants = self.path / "etc/systemd/system/multi-user.target.wants/ht-stage-trigger.service"
        wants.parent.mkdir(parents=True, exist_ok=True)
        if not wants.is_symlink():
            wants.symlink_to("/etc/systemd/system/ht-stage-trigger.service")

    def install_hosttune(self, wheels: Path) -> str:
        """python3 -m venv + pip install --no-index from ``wheels``, run by the guest's own
        Python inside the tree (chroot): the guest interpreter, the guest's paths. Returns the
        guest path of the hosttune entry point."""
        inbox = self.path / "root/wheels"
        shutil.rmtree(inbox, ignore_errors=True)
        shutil.copytree(wheels, inbox)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        _run(["chroot", str(self.path), "python3", "-m", "venv", GUEST_VENV], env=env)
        _run(["chroot", str(self.path), f"{GUEST_VENV}/bin/pip", "install", "-q",
              "--disable-pip-version-check", "--no-index", "--find-links", "/root/wheels",
              "hosttune"], env=env, timeout=900)
        shutil.rmtree(inbox)
        return f"{GUEST_VENV}/bin/hosttune"

    def ssh_host(self, hostname: str, authorized_key: str) -> None:
        """A host reachable over SSH as root with ``authorized_key``: its own hostname and
        host keys (the cached image's keys would be shared by every guest made from it)."""
        self.write("/etc/hostname", hostname + "\n")
        for k in (self.path / "etc/ssh").glob("ssh_host_*"):
            k.unlink()
        _run(["ssh-keygen", "-A", "-f", str(self.path)])
        self.write("/root/.ssh/authorized_keys", authorized_key, 0o600)
        (self.path / "root/.ssh").chmod(0o700)
        # minbase has no network configuration: QEMU's user-mode network forwards to
        # 10.0.2.15, so give the NIC that address statically (systemd-networkd, no DHCP)
        self.write("/etc/systemd/network/10-ht.network",
                   "[Match]\nName=en*\n\n[Network]\nAddress=10.0.2.15/24\n"
                   "Gateway=10.0.2.2\n")
        _run(["chroot", str(self.path), "systemctl", "enable", "systemd-networkd.service",
              "ssh.service"], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def write(self, guest_path: str, text: str | bytes, mode: int = 0o644) -> None:
        p = self.path / guest_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        p.chmod(mode)

    def swapfile(self, guest_path: str, size_mb: int) -> None:
        """A swap file that stays a swap file through mkfs.ext4 -d: random bytes (a run of
        zeros would become a hole, and swapon refuses "file has holes"), then mkswap."""
        p = self.path / guest_path.lstrip("/")
        with open(p, "wb") as fh:
            for _ in range(size_mb):
                fh.write(os.urandom(1 << 20))
        p.chmod(0o600)
        _run([_tool("mkswap"), "-q", str(p)])

    def kernel_and_initrd(self) -> tuple[Path, Path]:
        boot = self.path / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        initrds = sorted(boot.glob("initrd.img-*"))
        if not kernels or not initrds:
            raise GuestError(f"no kernel/initrd under {boot}")
        return kernels[-1], initrds[-1]

    def make_disk(self, img: Path, size: str = "4G", *, partitioned: bool = False) -> Disk:
        """ext4 from the tree with mkfs.ext4 -d (no loop device). partitioned: an MBR disk with
        one partition at 1 MiB (where grub-install puts core.img before it), the file system
        written at that offset."""
        kernel, initrd = self.kernel_and_initrd()
        img.parent.mkdir(parents=True, exist_ok=True)
        kdir = img.parent / f"{img.name}.boot"
        kdir.mkdir(exist_ok=True)
        shutil.copy(kernel, kdir / "vmlinuz")
        shutil.copy(initrd, kdir / "initrd.img")
        if not partitioned:
            _run([_tool("mkfs.ext4"), "-q", "-F", "-L", "htroot", "-d", str(self.path),
                  str(img), size], timeout=900)
            return Disk(img, 0, kdir / "vmlinuz", kdir / "initrd.img")
        fs = img.with_suffix(".part")
        _run([_tool("mkfs.ext4"), "-q", "-F", "-L", "htroot", "-d", str(self.path), str(fs),
              size], timeout=900)
        fs_size = fs.stat().st_size
        offset = 1 << 20
        with open(img, "wb") as fh:
            fh.truncate(offset + fs_size)
            fh.write(mbr(offset // 512, fs_size // 512))
        _run(["dd", f"if={fs}", f"of={img}", "bs=4M", f"seek={offset}", "oflag=seek_bytes",
              "conv=sparse,notrunc", "status=none"], timeout=900)
        fs.unlink()
        return Disk(img, offset, kdir / "vmlinuz", kdir / "initrd.img")


def mbr(start_lba: int, sectors: int) -> bytes:
    """A DOS partition table with one bootable Linux partition (type 0x83), LBA addressing
    (CHS fields set to the 'use LBA' maximum, as fdisk does for large disks)."""
    entry = (bytes([0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF])
             + start_lba.to_bytes(4, "little") + sectors.to_bytes(4, "little"))
    sig = os.urandom(4)  # disk identifier
    return b"\0" * 440 + sig + b"\0\0" + entry + b"\0" * 48 + b"\x55\xaa"


# --- a disk and its boots -----------------------------------------------------------------------
@dataclass(frozen=True)
class Disk:
    path: Path
    fs_offset: int  # bytes: where the ext4 file system starts (0 = whole disk)
    kernel: Path
    initrd: Path

    @property
    def debugfs_spec(self) -> str:
        # e2fsprogs' unix io manager takes options after '?' (offset= for a partition)
        return str(self.path) if not self.fs_offset else f"{self.path}?offset={self.fs_offset}"

    def debugfs(self, request: str) -> str:
        p = subprocess.run([_tool("debugfs"), "-R", request, self.debugfs_spec],
                           capture_output=True, timeout=120, check=False)
        if p.returncode != 0:
            raise GuestError(f"debugfs -R {request!r}: {p.stderr.decode(errors='replace')}")
        return p.stdout.decode(errors="replace")

    def read(self, guest_path: str) -> bytes | None:
        """A file's bytes from the image (None when absent)."""
        p = subprocess.run([_tool("debugfs"), "-R", f"cat {guest_path}", self.debugfs_spec],
                           capture_output=True, timeout=120, check=False)
        if b"File not found" in p.stderr or p.returncode != 0:
            return None
        return p.stdout

    def rdump(self, guest_dir: str, dest: Path) -> Path:
        """Copy a directory out of the image: dest/<basename of guest_dir>."""
        dest.mkdir(parents=True, exist_ok=True)
        self.debugfs(f'rdump "{guest_dir}" "{dest}"')
        out = dest / os.path.basename(guest_dir.rstrip("/"))
        if not out.exists():
            raise GuestError(f"debugfs could not copy {guest_dir} out of {self.path}")
        return out


@dataclass
class BootResult:
    console: str
    log: Path
    rc: int | None  # the stage's exit status (None after a power cut)
    out: dict[str, str] = field(default_factory=dict)  # /ht/out/<name> -> text
    cut: bool = False
    seconds: float = 0.0
    out_dir: Path | None = None  # /ht/out copied out of the image (binary files too)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-n:])


def same_priority(pid: int) -> None:
    """Give a process started with start_new_session our nice value for real. A new session
    is a new autogroup (sched(7), CONFIG_SCHED_AUTOGROUP, on in Debian's kernels and here): the
    scheduler first shares the CPUs between autogroups, and a process's nice value only ranks
    it inside its own. A guest started from a harness at nice 10 (.ci/run's lanes) would
    otherwise weigh as much as the whole suite beside it; seen here: four autogroups (three
    fleet guests and the suite) got half a core each. The autogroup's nice is set through
    /proc/PID/autogroup; where that file is absent there are no autogroups to correct."""
    nice = os.nice(0)
    if nice <= 0:
        return
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")


def _accel() -> list[str]:
    # TCG always works here; KVM only when asked (nested KVM hangs at boot on this machine
    # kind, and -cpu host fails on MSR 0x10a).
    if os.environ.get("HOSTTUNE_VM_ACCEL") == "kvm" and os.path.exists("/dev/kvm"):
        return ["-accel", "kvm", "-cpu", "qemu64"]
    return ["-accel", "tcg", "-cpu", "max"]


def numa_args(mem_mb: int, node_cpus: list[str]) -> tuple[str, ...]:
    """QEMU arguments for NUMA nodes: one RAM backend per node (``mem_mb`` split evenly; QEMU
    wants the nodes' sizes to add up to -m) and ``-numa node`` with that node's CPUs (a cpulist,
    "0-3"), so the guest kernel sees /sys/devices/system/node/node<i>."""
    if mem_mb % len(node_cpus):
        raise ValueError(f"{mem_mb} MiB does not split evenly over {len(node_cpus)} nodes")
    out: list[str] = []
    for i, cpus in enumerate(node_cpus):
        out += ["-object", f"memory-backend-ram,id=ram{i},size={mem_mb // len(node_cpus)}M",
                "-numa", f"node,nodeid={i},memdev=ram{i},cpus={cpus}"]
    return tuple(out)


def stage_tar(script: str, files: dict[str, str | bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {"stage.sh": script, **(files or {})}.items():
            b = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(b)
            info.mode = 0o755
            tf.addfile(info, io.BytesIO(b))
    raw = buf.getvalue()
    return raw + b"\0" * (-len(raw) % 512)  # a disk is whole sectors


class Guest:
    """One persistent disk; each ``boot`` is one QEMU run."""

    def __init__(self, disk: Disk, logs: Path, *, name: str = "guest",
                 cmdline: str = "", grub: bool = False, smp: str = "2",
                 mem_mb: int = MEM_MB, machine_args: tuple[str, ...] = (),
                 cpu: str | None = None) -> None:
        self.disk = disk
        self.cpu = cpu  # QEMU -cpu model and properties (default: _accel()'s)
        self.smp = smp  # QEMU -smp: CPU count and topology (sockets, cores, threads)
        self.mem_mb = mem_mb
        self.machine_args = machine_args  # more QEMU arguments (NUMA nodes: numa_args())
        self.logs = logs
        self.name = name
        self.cmdline = cmdline
        self.grub = grub  # boot through the disk's boot loader (SeaBIOS -> GRUB), not -kernel
        self.boots = 0
        logs.mkdir(parents=True, exist_ok=True)

    def _argv(self, stage_img: Path, results_img: Path) -> list[str]:
        accel = _accel()
        if self.cpu:
            accel[accel.index("-cpu") + 1] = self.cpu
        argv = ["qemu-system-x86_64", *accel, "-m", str(self.mem_mb), "-smp", self.smp,
                *self.machine_args, "-display", "none", "-monitor", "none", "-no-reboot",
                "-drive", f"file={self.disk.path},format=raw,if=virtio",
                "-drive", f"file={stage_img},format=raw,if=virtio,readonly=on",
                "-drive", f"file={results_img},format=raw,if=virtio",
                "-nic", "none"]
        if not self.grub:
            root = "/dev/vda1" if self.disk.fs_offset else "/dev/vda"
            argv += ["-kernel", str(self.disk.kernel), "-initrd", str(self.disk.initrd),
                     "-append", kernel_append(root, self.cmdline)]
        return argv

    def boot(self, script: str, *, files: dict[str, str | bytes] | None = None,
             label: str = "", boot_timeout_s: float = 900, stage_timeout_s: float = 1800,
             cut_at: str | Callable[[str], bool] | None = None,
             cut_delay_s: float = 0.0) -> BootResult:
        """Boot, run ``script`` as the stage, wait for power-off, read /ht/out back.
        ``cut_at``: a regular expression (or a test of the whole console text); when a console
        line matches it QEMU is killed with SIGKILL after ``cut_delay_s`` (the guest loses what
        it had not written to its disk). A cut boot's results are what the stage flushed
        (``ht_flush``) before the cut."""
        self.boots += 1
        tag = f"{self.name}-{self.boots:02d}{'-' + label if label else ''}"
        log = self.logs / f"{tag}.console.log"
        stage_img = self.logs / f"{tag}.stage.tar"
        stage_img.write_bytes(stage_tar(script, files))
        results_img = self.logs / f"{tag}.results.img"
        with open(results_img, "wb") as fh:
            fh.truncate(RESULTS_MB << 20)
        with vm_lock():
            try:
                res = self._run_qemu(log, stage_img, results_img, boot_timeout_s,
                                     stage_timeout_s, cut_at, cut_delay_s)
            except QemuCrashed as err:
                # QEMU itself died (ci23: SIGSEGV in qemu-system-x86_64 7.2 before the guest
                # printed a line): the guest never ran, its disk is untouched - boot once more
                print(f"note: {tag}: {err.args[0].splitlines()[0]}; booting again")
                log.rename(log.with_suffix(".crashed.log"))
                with open(results_img, "wb") as fh:
                    fh.truncate(RESULTS_MB << 20)
                res = self._run_qemu(log, stage_img, results_img, boot_timeout_s,
                                     stage_timeout_s, cut_at, cut_delay_s)
        stage_img.unlink()
        out_dir = self.logs / f"{tag}.out"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
        with open(results_img, "rb") as fh:
            head = fh.read(512)
        if head.strip(b"\0"):  # the stage (or ht_flush before a cut) wrote its tar
            with tarfile.open(results_img) as tf:
                tf.extractall(out_dir, filter="data")
        results_img.unlink()
        res.out_dir = out_dir
        if not res.cut:
            m = DONE_RE.search(res.console)
            if m is None:
                raise GuestError(f"{tag}: the guest powered off before the stage finished "
                                 f"(console {log}):\n{res.tail()}")
            res.rc = int(m.group(1))
        res.out = {p.name: p.read_text(errors="replace") for p in out_dir.iterdir()
                   if p.is_file() and not p.name.endswith(".tar")}
        if not res.cut and "rc" not in res.out:
            raise GuestError(f"{tag}: no results came back (console {log}):\n{res.tail()}")
        return res

    def _run_qemu(self, log: Path, stage_img: Path, results_img: Path, boot_timeout_s: float,
                  stage_timeout_s: float, cut_at: str | Callable[[str], bool] | None,
                  cut_delay_s: float) -> BootResult:
        argv = self._argv(stage_img, results_img) + ["-serial", f"file:{log}"]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        same_priority(proc.pid)
        if isinstance(cut_at, str):
            cut_re = re.compile(cut_at)

            def should_cut(text: str) -> bool:
                return any(cut_re.search(ln) for ln in text.splitlines())
        else:
            should_cut = cut_at or (lambda text: False)
        probed = False
        cut = False
        try:
            while proc.poll() is None:
                time.sleep(0.1 if cut_at else 0.5)
                text = log.read_text(errors="replace") if log.exists() else ""
                now = time.monotonic() - t0
                if not probed:
                    probed = PROBE in text
                    if not probed and now > boot_timeout_s:
                        raise GuestError(self._fail(log, f"no stage probe within "
                                                    f"{boot_timeout_s:.0f} s"))
                elif now > boot_timeout_s + stage_timeout_s:
                    raise GuestError(self._fail(log, "the stage did not power off within "
                                                f"{stage_timeout_s:.0f} s"))
                if probed and should_cut(text):
                    if cut_delay_s:
                        time.sleep(cut_delay_s)
                    proc.kill()  # SIGKILL: a power cut for the guest
                    proc.wait()
                    cut = True
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        qemu_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        console = log.read_text(errors="replace") if log.exists() else ""
        if not cut and proc.returncode != 0:
            msg = self._fail(log, f"qemu exited {proc.returncode}: {qemu_out}")
            if proc.returncode < 0 and not console.strip():  # killed by a signal, not by us
                raise QemuCrashed(msg)
            raise GuestError(msg)
        return BootResult(console, log, None, cut=cut, seconds=time.monotonic() - t0)

    @contextlib.contextmanager
    def serve(self, ssh_port: int, *, boot_timeout_s: float = 900,
              mem_mb: int = 1024) -> Iterator[Path]:
        """Boot and keep the guest up, its sshd on 127.0.0.1:``ssh_port`` (user-mode network,
        restrict=on: the guest reaches nothing, only the forwarded port reaches it); yields the
        console log once sshd answers. Reboots stay inside the same QEMU (no -no-reboot). At the
        end: a clean power-off over SSH when possible, else QEMU is killed. The caller holds
        vm_lock() for as long as its guests run (several guests: one lock for all)."""
        self.boots += 1
        log = self.logs / f"{self.name}-{self.boots:02d}-serve.console.log"
        root = "/dev/vda1" if self.disk.fs_offset else "/dev/vda"
        argv = ["qemu-system-x86_64", *_accel(), "-m", str(mem_mb), "-smp", "1",
                "-display", "none", "-monitor", "none",
                "-drive", f"file={self.disk.path},format=raw,if=virtio",
                "-nic", f"user,model=virtio-net-pci,restrict=on,"
                        f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                "-kernel", str(self.disk.kernel), "-initrd", str(self.disk.initrd),
                "-append", kernel_append(root, self.cmdline),
                "-serial", f"file:{log}"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        same_priority(proc.pid)
        try:
            deadline = time.monotonic() + boot_timeout_s
            while not ssh_banner(ssh_port):
                if proc.poll() is not None:
                    raise GuestError(self._fail(log, f"qemu exited {proc.returncode}"))
                if time.monotonic() > deadline:
                    raise GuestError(self._fail(log, f"no sshd on 127.0.0.1:{ssh_port} within "
                                                f"{boot_timeout_s:.0f} s"))
                time.sleep(2)
            yield log
            try:
                proc.wait(timeout=180)  # the caller powered it off
            except subprocess.TimeoutExpired:
                pass
        finally:
            if proc.poll() is None:  # a failed scenario: no clean power-off to wait for
                proc.kill()
                proc.wait()

    @staticmethod
    def _fail(log: Path, why: str) -> str:
        text = log.read_text(errors="replace") if log.exists() else ""
        tail = "\n".join(text.splitlines()[-40:])
        return f"{why} (console log {log}); last lines:\n{tail}"

    def read(self, guest_path: str) -> bytes | None:
        return self.disk.read(guest_path)


def ssh_banner(port: int) -> bool:
    """sshd answers on 127.0.0.1:port (QEMU's forwarder accepts connections before the
    guest listens, so a connect alone proves nothing: wait for the banner)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(10)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False
