"""The door's reading methods (stat, lstat, readlink, realpath, walk_files, open_read, open_fd,
pids, link, chmod) under --root with planted symlinks, and the readers moved onto them (model
store, monitor, doctor) refusing FIFOs, devices and oversize files through the door.

Like tests/test_escape.py: a decoy directory sits next to the tree, every file of it holds a
marker, and links planted in the tree point at it (absolute, or relative and climbing out).
Whatever a method answers, it must never return a decoy byte, name or stat, and no decoy
byte may change."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from hosttune.errors import HostError
from hosttune.host import Host
from hosttune.models.store import StoreMount, list_models, verify_model
from hosttune.models.trailer import TRAILER_LEN, Trailer, stored_size

MARKER = b"DECOY-7f3a-LINE\n"
MiB = 1 << 20
HP = 2 * MiB


def _digest(d: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(d):
        for n in sorted(dirs + files):
            p = Path(dirpath, n)
            st = p.lstat()
            body = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) \
                else os.readlink(p) if p.is_symlink() else ""
            out[str(p)] = f"{st.st_mode:o} {body}"
    return out


@pytest.fixture
def planted(tmp_path: Path):
    """(tree, decoy): the decoy holds secret files and a directory; the tree holds one real
    file and links to the decoy from each place a reader would look."""
    decoy = tmp_path / "decoy"
    (decoy / "sub").mkdir(parents=True)
    for f in ("secret.conf", "sub/deep.conf"):
        (decoy / f).write_bytes(MARKER)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/real.conf").write_bytes(b"mine\n")
    (tree / "etc/alias.conf").symlink_to("/etc/real.conf")  # inside the tree: followed there
    (tree / "etc/abs").symlink_to(decoy)  # absolute: restarts at the tree's root
    (tree / "etc/rel").symlink_to("../../../../../../../decoy")  # climbs: clamped at the root
    (tree / "etc/secret.conf").symlink_to(decoy / "secret.conf")
    store = tree / "srv/models"
    store.mkdir(parents=True)
    (store / "a.bin").write_bytes(b"x" * 10)
    (store / "d").mkdir()
    (store / "d/b.bin").write_bytes(b"y" * 20)
    (store / "out").symlink_to(decoy)  # a linked directory: never walked into
    (store / "leak.bin").symlink_to(decoy / "secret.conf")  # a linked file: never listed
    (store / "up").symlink_to("../../../decoy")
    os.mkfifo(store / "fifo")
    before = _digest(decoy)
    yield tree, decoy
    assert _digest(decoy) == before, "a decoy byte changed"


def test_stat_lstat_readlink_realpath_stay_inside(planted):
    tree, decoy = planted
    h = Host(tree)
    assert h.stat("/etc/alias.conf").st_ino == (tree / "etc/real.conf").stat().st_ino
    assert h.is_file("/etc/alias.conf") and h.is_symlink("/etc/alias.conf")
    assert h.readlink("/etc/alias.conf") == "/etc/real.conf"
    assert h.realpath("/etc/alias.conf") == "/etc/real.conf"
    assert h.readlink("/etc/real.conf") is None and h.readlink("/etc/none") is None
    for p in ("/etc/abs/secret.conf", "/etc/rel/secret.conf", "/etc/secret.conf",
              "/etc/abs/sub/deep.conf", "/srv/models/up/secret.conf"):
        assert h.stat(p) is None, p  # the decoy's path does not exist inside the tree
        assert not h.is_file(p) and not h.access(p, os.R_OK)
        with pytest.raises(FileNotFoundError):
            h.open_read(p)
        with pytest.raises(FileNotFoundError):
            h.open_fd(p)
    assert h.listdir("/etc/abs") == [] and h.listdir("/etc/rel") == []
    # the link itself is the tree's: lstat and readlink show it, as stored
    assert h.is_symlink("/etc/abs") and h.readlink("/etc/abs") == str(decoy)
    assert h.realpath("/etc/rel/x") == "/decoy/x"  # named inside the tree, never above it


def test_walk_files_never_follows_a_link(planted):
    tree, _ = planted
    h = Host(tree)
    found = h.walk_files("/srv/models")
    assert [(f.path, f.rel, f.st.st_size) for f in found] == [
        ("/srv/models/a.bin", "a.bin", 10), ("/srv/models/d/b.bin", "d/b.bin", 20)]
    assert h.walk_files("/etc/abs") == [] and h.walk_files("/srv/models/out") == []
    assert h.walk_files("/etc/real.conf") == [] and h.walk_files("/nowhere") == []


def test_open_read_refuses_fifos_devices_and_oversize(planted):
    tree, _ = planted
    h = Host(tree)
    with h.open_read("/etc/alias.conf") as fh:
        assert fh.read() == b"mine\n"
    with h.open_read("/etc/alias.conf", text=True) as fh:
        assert list(fh) == ["mine\n"]
    done: list[str] = []

    def reader() -> None:  # a FIFO with no writer would block a plain open() for ever
        try:
            h.open_read("/srv/models/fifo")
        except HostError as err:
            done.append(str(err))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(30)
    assert done and "not a regular file" in done[0] and str(tree) in done[0]
    with pytest.raises(HostError, match="larger than"):
        h.open_read("/srv/models/d/b.bin", limit=10)
    with pytest.raises(HostError, match="not a regular file"):
        h.open_fd("/srv/models/fifo")
    with pytest.raises(IsADirectoryError):
        h.open_read("/srv/models/d")
    live = Host("/")
    with pytest.raises(HostError, match="not a regular file"):
        live.open_read("/dev/zero")
    with live.open_read("/dev/null") as fh:  # a masked unit: empty, like systemd reads it
        assert fh.read() == b""


def test_creating_writes_refuse_a_linked_directory(planted):
    tree, decoy = planted
    h = Host(tree)
    for p in ("/etc/abs/new", "/etc/rel/new", "/srv/models/out/new"):
        with pytest.raises(HostError, match="symlink"):
            h.open_fd(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, regular=False)
    with pytest.raises(HostError, match="symlink"):
        h.link("/etc/real.conf", "/etc/abs/real.conf")
    with pytest.raises(HostError, match="symlink"):
        h.chmod("/etc/secret.conf", 0o777)  # the link's target is the decoy's file
    fd = h.open_fd("/srv/models/new.bin", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600,
                   regular=False)
    os.close(fd)
    h.link("/srv/models/new.bin", "/srv/models/new2.bin")
    with pytest.raises(FileExistsError):
        h.link("/srv/models/new.bin", "/srv/models/a.bin")
    h.chmod("/srv/models/new2.bin", 0o640)
    assert stat.S_IMODE((tree / "srv/models/new.bin").stat().st_mode) == 0o640
    assert not (decoy / "new").exists()


def test_pids_are_the_trees(tmp_path: Path):
    for d in ("proc/1", "proc/42", "proc/self", "proc/sys"):
        (tmp_path / d).mkdir(parents=True)
    assert Host(tmp_path).pids() == [1, 42]
    (tmp_path / "proc/1/comm").write_text("systemd\n")
    (tmp_path / "proc/42/comm").write_text("dockerd\n")
    by = Host(tmp_path).pids_by_comm({"dockerd", "containerd"})
    assert by == {"dockerd": [42]}
    live = Host("/").pids()
    assert 1 in live and os.getpid() not in live


# --- readers that stream through the door ------------------------------------------------
def _store_file(path: Path, data: bytes) -> None:
    total = stored_size(len(data), HP)
    tr = Trailer(len(data), HP, 0, 0, 0, 1)
    path.write_bytes(data + bytes(total - len(data) - TRAILER_LEN) + tr.pack())


def test_model_store_skips_links_and_fifos_and_verify_refuses_a_fifo(planted):
    from msgspec.structs import replace

    tree, _ = planted
    h = Host(tree)
    _store_file(tree / "srv/models/good.gguf", b"GGUF" + bytes(100))
    mount = StoreMount("/srv/models", HP, True, False, None)
    models = {m.name: m for m in list_models(h, [mount])}
    assert set(models) == {"a.bin", "good.gguf"}  # no fifo, no linked file, no decoy name
    assert models["good.gguf"].trailer is not None
    assert verify_model(h, models["good.gguf"]).ok
    # a store name that is a FIFO (or became one since the listing): refused, not a hang
    with pytest.raises(HostError, match="not a regular file"):
        verify_model(h, replace(models["good.gguf"], name="fifo"))
    with pytest.raises(FileNotFoundError):  # the linked file is not followed out
        verify_model(h, replace(models["good.gguf"], name="leak.bin"))


def test_monitor_store_reading_skips_links_and_fifos(planted):
    from hosttune.monitor.snapshot import StoreCollector, StoreReading

    tree, _ = planted
    (tree / "proc/self").mkdir(parents=True)
    (tree / "proc/self/mountinfo").write_text(
        "40 22 0:40 / /srv/models rw,relatime shared:9 - hugetlbfs hugetlbfs "
        "rw,pagesize=2M,size=1G\n")
    (tree / "proc/meminfo").write_text("MemTotal: 8000000 kB\nHugepagesize: 2048 kB\n")
    reading = StoreCollector().read(Host(tree))
    assert isinstance(reading, StoreReading)
    assert [(f.name, f.size_bytes) for f in reading.mounts[0].files] == [
        ("a.bin", 10), ("d/b.bin", 20)]


def test_doctor_script_and_compose_readers_skip_fifos_links_and_big_files(planted):
    from hosttune.doctor.base import DoctorContext
    from hosttune.doctor.composefiles import compose_files
    from hosttune.doctor.shellcmds import MAX_SCRIPT_BYTES, script_files

    tree, decoy = planted
    bin_ = tree / "usr/local/bin"
    bin_.mkdir(parents=True)
    (bin_ / "tune.sh").write_text("#!/bin/sh\nsysctl -w vm.swappiness=1\n")
    (bin_ / "big").write_bytes(b"#" * (MAX_SCRIPT_BYTES + 1))
    os.mkfifo(bin_ / "pipe")
    (bin_ / "leak").symlink_to(decoy / "secret.conf")
    ctx = DoctorContext(host=Host(tree))
    assert script_files(ctx) == ["/usr/local/bin/tune.sh"]
    for d in ("opt/fifo", "opt/link", "opt/real"):
        (tree / d).mkdir(parents=True)
    os.mkfifo(tree / "opt/fifo/compose.yml")
    (tree / "opt/link/compose.yml").symlink_to(decoy / "secret.conf")
    (tree / "opt/real/compose.yml").write_text("services: {}\n")
    assert compose_files(ctx) == ["/opt/real/compose.yml"]
