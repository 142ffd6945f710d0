"""The huge-page model store: model files on hugetlbfs mounts, loaded once, mapped by every
inference process with MAP_SHARED (no copy into anonymous memory: a wrapper that reads the
model into its own buffer holds a second copy of it in huge pages).

load: the store file is filled through a writable MAP_SHARED mapping (hugetlbfs has no
write(2): EINVAL) by parallel preadv from the source, with an optional checksum computed on
the way, and a trailer (trailer.py) that records the true size. Every failure - and Ctrl-C -
leaves no partial file behind, and its huge pages go back to the pool.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from msgspec import field

from hosttune.errors import HostError, HosttuneError
from hosttune.host.parsers import parse_meminfo, parse_mountinfo
from hosttune.models import kernel
from hosttune.models.checksum import LEAF_LOG2, PIECE, combine, leaf_digest, new_leaf
from hosttune.models.trailer import (
    ALGO_NONE,
    ALGO_XXH3_TREE,
    TRAILER_LEN,
    Trailer,
    parse_trailer,
    stored_size,
)
from hosttune.profile.sizes import (
    check_model_name,
    format_size,
    hugepage_size_label,
    parse_size,
)

if TYPE_CHECKING:
    import xxhash

    from hosttune.host import Host
    from hosttune.profile.schema import Profile



class LoadProgress(msgspec.Struct, frozen=True):
    """How far a load's copy is: bytes copied of ``total`` after ``elapsed_s`` seconds of wall
    time since the copy began. The rate is the average over the whole copy, never a per-tick
    delta (two reports a few microseconds apart would divide by almost nothing)."""

    done: int
    total: int
    elapsed_s: float

    @property
    def rate_bytes_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 and self.done else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rate_bytes_per_s
        return (self.total - self.done) / rate if rate > 0 else None


Progress = Callable[[LoadProgress], None]
TEMP_MARK = ".hosttune-loading-"


class ModelStoreError(HosttuneError):
    """A model-store operation failed; the message says why and what fixes it."""


class LoadInterrupted(ModelStoreError):
    """Ctrl-C during a load: nothing was stored, the pages went back to the pool."""


# --- pool and mounts ----------------------------------------------------------------------
class PoolState(msgspec.Struct, frozen=True):
    page_size: int
    total: int
    free: int
    reserved: int
    surplus: int
    nodes: dict[int, tuple[int, int]]  # node -> (total, free)

    @property
    def available(self) -> int:
        """Pages a new file can still get: free minus those promised to existing mappings."""
        return max(0, self.free - self.reserved)


def _kb_dir(page_size: int) -> str:
    return f"hugepages-{page_size // 1024}kB"


def _int(text: str | None) -> int:
    try:
        return int((text or "0").strip())
    except ValueError:
        return 0


def pool_state(host: Host, page_size: int) -> PoolState:
    base = f"/sys/kernel/mm/hugepages/{_kb_dir(page_size)}"
    nodes: dict[int, tuple[int, int]] = {}
    for d in host.listdir("/sys/devices/system/node"):
        if d.startswith("node") and d[4:].isdigit():
            nb = f"/sys/devices/system/node/{d}/hugepages/{_kb_dir(page_size)}"
            if host.exists(nb):
                nodes[int(d[4:])] = (_int(host.read_value(f"{nb}/nr_hugepages")),
                                     _int(host.read_value(f"{nb}/free_hugepages")))
    return PoolState(page_size, _int(host.read_value(f"{base}/nr_hugepages")),
                     _int(host.read_value(f"{base}/free_hugepages")),
                     _int(host.read_value(f"{base}/resv_hugepages")),
                     _int(host.read_value(f"{base}/surplus_hugepages")), nodes)


class StoreMount(msgspec.Struct, frozen=True):
    path: str  # host path
    page_size: int
    mounted: bool  # a hugetlbfs mount is there now
    declared: bool  # the profile declares it
    limit_bytes: int | None  # the mount's size= limit (None: unlimited or unknown)
    declared_size: str | None = None


def _label_bytes(label: str) -> int:
    return parse_size(label if label[-1:].isdigit() else label + "iB")


def _default_page(host: Host) -> int:
    return parse_meminfo(host.read_text("/proc/meminfo") or "").get("Hugepagesize", 2 << 20)


def store_mounts(host: Host, profile: Profile | None) -> list[StoreMount]:
    """hugetlbfs mounts the profile declares plus those mounted now (live: /proc/self/
    mountinfo; --root: the tree's copy)."""
    live = {m.mount_point: m for m in parse_mountinfo(host.read_text("/proc/self/mountinfo")
                                                      or "") if m.fstype == "hugetlbfs"}
    out: dict[str, StoreMount] = {}
    declared = profile.hugetlbfs.mounts if profile and profile.hugetlbfs else []
    for d in declared:
        m = live.get(d.path)
        page = _label_bytes(d.pagesize)
        limit = None
        if m is not None and m.options.get("size"):
            limit = _mount_limit(m.options["size"], page)
        out[d.path] = StoreMount(d.path, page, m is not None, True, limit, str(d.size))
    for path, m in live.items():
        if path in out:
            continue
        ps = m.options.get("pagesize")
        page = _label_bytes(ps) if ps else _default_page(host)
        limit = _mount_limit(m.options["size"], page) if m.options.get("size") else None
        out[path] = StoreMount(path, page, True, False, limit)
    return list(out.values())


def _mount_limit(opt: str, page: int) -> int | None:
    # mountinfo shows size= in bytes rounded to pages (fs/hugetlbfs/inode.c show_options).
    try:
        return parse_size(opt if opt[-1:].isdigit() else opt + "iB")
    except ValueError:
        return None


def resolve_mount(host: Host, profile: Profile | None, mount: str | None) -> StoreMount:
    """The store mount a command works on: --mount, else the profile's models.mount, else the
    only hugetlbfs mount (declared ones first)."""
    mounts = store_mounts(host, profile)
    if mount is None and profile is not None and profile.models and profile.models.mount:
        mount = profile.models.mount
    if mount is not None:
        mount = mount.rstrip("/") or "/"
        for m in mounts:
            if m.path == mount:
                if not host.offline and not host.is_hugetlbfs(mount):
                    raise ModelStoreError(_not_hugetlbfs(host, mount))
                return m
        if host.offline or not host.is_hugetlbfs(mount):
            raise ModelStoreError(_not_hugetlbfs(host, mount))
        return StoreMount(mount, host.statvfs(mount).f_bsize, True, False, None)
    usable = [m for m in mounts if m.mounted]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        hint = ", ".join(m.path for m in mounts) or "none"
        raise ModelStoreError(
            f"no hugetlbfs mount to store models on (declared: {hint}); mount one with "
            "`hosttune apply` (hugetlbfs section of the profile) or `mount -t hugetlbfs -o "
            "pagesize=2M,size=8G none /srv/hosttune/models`, or pass --mount")
    raise ModelStoreError("several hugetlbfs mounts: choose one with --mount ("
                          + ", ".join(m.path for m in usable) + ")")


def _not_hugetlbfs(host: Host, mount: str) -> str:
    if not host.is_dir(mount):
        what = "does not exist" if not host.exists(mount) else "is not a directory"
    else:
        try:
            what = f"is on a {hex(host.fs_type(mount))} filesystem, not hugetlbfs"
        except OSError as err:
            what = f"cannot be checked ({err.strerror})"
    return (f"{mount} {what}: models live on a hugetlbfs mount; mount one with `hosttune "
            f"apply` (hugetlbfs section) or `mount -t hugetlbfs -o pagesize=2M none {mount}`")


# --- stored models ------------------------------------------------------------------------
class StoredModel(msgspec.Struct, frozen=True):
    name: str
    mount: str
    true_size: int
    stored_size: int
    page_size: int
    trailer: Trailer | None  # None: not a store file (no valid trailer)
    partial: bool = False  # a leftover of a load that was killed (-9)
    pages_per_node: dict[int, int] | None = None

    @property
    def pages(self) -> int:
        return self.stored_size // self.page_size

    @property
    def path(self) -> str:
        return f"{self.mount}/{self.name}"

    def to_json(self) -> dict[str, object]:
        t = self.trailer
        return {
            "name": self.name, "mount": self.mount, "path": self.path,
            "true_size_bytes": self.true_size, "stored_size_bytes": self.stored_size,
            "page_size_bytes": self.page_size, "pages": self.pages,
            "valid": t is not None, "partial": self.partial,
            "checksum": None if t is None or t.algo == ALGO_NONE else f"{t.checksum:016x}",
            "checksum_algo": None if t is None else t.algo_name,
            "loaded_at": None if t is None else t.loaded_at,
            "pages_per_node": self.pages_per_node,
        }


def read_trailer_fd(fd: int, page_size: int | None = None) -> Trailer | None:
    st = os.fstat(fd)
    page = page_size or st.st_blksize
    if st.st_size < TRAILER_LEN:
        return None
    raw = os.pread(fd, TRAILER_LEN, st.st_size - TRAILER_LEN)
    return parse_trailer(raw, file_size=st.st_size, page_size=page)


def _read_model(host: Host, mount: StoreMount, name: str, *, nodes: bool) -> StoredModel:
    real = str(host.path(f"{mount.path}/{name}"))  # as numa_maps names it
    fd = host.open_fd(f"{mount.path}/{name}")
    try:
        st = os.fstat(fd)
        page = mount.page_size if host.offline else st.st_blksize
        tr = read_trailer_fd(fd, page)
        per_node = None
        if nodes and tr is not None and not host.offline and st.st_size:
            per_node = _pages_per_node(host, fd, st.st_size, real)
    finally:
        os.close(fd)
    return StoredModel(name, mount.path, tr.true_size if tr else st.st_size, st.st_size, page,
                       tr, partial=TEMP_MARK in name, pages_per_node=per_node)


_NUMA_N_RE = re.compile(r"\bN(\d+)=(\d+)")


def parse_numa_maps(text: str, path: str, page_size: int) -> dict[int, int]:
    """Pages per node of the mappings of ``path`` in a /proc/PID/numa_maps text (counts there
    are in pages of kernelpagesize_kB)."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        if f" file={path} " not in line + " ":
            continue
        kps = re.search(r"kernelpagesize_kB=(\d+)", line)
        scale = (int(kps.group(1)) * 1024 // page_size) if kps else 1
        for n, c in _NUMA_N_RE.findall(line):
            out[int(n)] = out.get(int(n), 0) + int(c) * max(scale, 1)
    return out


def _pages_per_node(host: Host, fd: int, size: int, path: str) -> dict[int, int] | None:
    # Map the file read-only and populate the page tables (the pages exist already: no
    # allocation), then read where they are from our own numa_maps.
    try:
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                      prot=mmap.PROT_READ)
    except OSError:
        return None
    try:
        return _mapped_pages_per_node(host, fd, path)
    finally:
        m.close()


def _mapped_pages_per_node(host: Host, fd: int, path: str) -> dict[int, int] | None:
    """Pages per node of ``path`` as our own mappings of it show them (every page faulted)."""
    try:
        text = host.read_text("/proc/self/numa_maps") or ""
        return parse_numa_maps(text, path, os.fstat(fd).st_blksize)
    except (OSError, HostError):
        return None


def list_models(host: Host, mounts: list[StoreMount], *, nodes: bool = True) -> list[StoredModel]:
    out: list[StoredModel] = []
    for m in mounts:
        if not host.is_dir(m.path) or (not host.offline and not host.is_hugetlbfs(m.path)):
            continue
        for name in host.listdir(m.path):
            try:
                st = host.lstat(f"{m.path}/{name}")
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue
                out.append(_read_model(host, m, name, nodes=nodes))
            except (OSError, HostError):
                continue
    return out


def find_model(host: Host, mounts: list[StoreMount], name: str) -> StoredModel:
    hits = [m for m in list_models(host, mounts, nodes=False) if m.name == name]
    if not hits:
        raise ModelStoreError(f"no model named {name!r} in "
                              + (", ".join(m.path for m in mounts) or "any store mount"))
    if len(hits) > 1:
        raise ModelStoreError(f"{name!r} is in several mounts ("
                              + ", ".join(h.mount for h in hits) + "): choose one with --mount")
    return hits[0]


# --- verify ---------------------------------------------------------------------------------
class VerifyResult(msgspec.Struct, frozen=True):
    model: StoredModel
    problems: tuple[str, ...]
    checksum_checked: bool

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_model(host: Host, model: StoredModel) -> VerifyResult:
    problems: list[str] = []
    tr = model.trailer
    if model.partial:
        problems.append("leftover of an interrupted load (remove it with `hosttune models "
                        f"unload {model.name}`)")
    if tr is None:
        problems.append("no valid hosttune trailer: not a store file, or damaged")
        return VerifyResult(model, tuple(problems), False)
    checked = False
    fd = host.open_fd(model.path)
    try:
        pad = os.pread(fd, model.stored_size - TRAILER_LEN - tr.true_size, tr.true_size)
        if pad.strip(b"\0"):
            problems.append("bytes after the model data are not zero (file was changed)")
        if tr.algo == ALGO_XXH3_TREE:
            checked = True
            got = _checksum_file(fd, tr.true_size, tr.leaf_log2)
            if got != tr.checksum:
                problems.append(f"checksum mismatch: recorded {tr.checksum:016x}, data "
                                f"{got:016x}")
        elif tr.algo != ALGO_NONE:
            problems.append(f"unknown checksum algorithm {tr.algo}")
    finally:
        os.close(fd)
    return VerifyResult(model, tuple(problems), checked)


def _checksum_file(fd: int, size: int, leaf_log2: int) -> int:
    """The tree checksum of the first ``size`` bytes of ``fd``, hashed straight from a
    read-only mapping (no copy into a buffer; on hugetlbfs the pages are already there)."""
    if size <= 0:
        return combine([leaf_digest(b"")])
    length = os.fstat(fd).st_size
    if length < size:
        raise ModelStoreError("store file shorter than its trailer says")
    leaf = 1 << leaf_log2
    m = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        view = memoryview(m)
        try:
            digests = []
            for off in range(0, size, leaf):
                part = view[off:min(off + leaf, size)]
                digests.append(leaf_digest(part))
                part.release()
        finally:
            view.release()
    finally:
        m.close()
    return combine(digests)


# --- unload ---------------------------------------------------------------------------------
class UnloadResult(msgspec.Struct, frozen=True):
    model: StoredModel
    pages_freed_now: bool
    in_use_by: tuple[int, ...]  # PIDs that still map or hold the file


def users_of(host: Host, real_path: str) -> tuple[int, ...]:
    """PIDs that map ``real_path`` (their pages return to the pool only when they exit)."""
    pids: list[int] = []
    for pid in host.pids():
        try:
            with host.open_read(f"/proc/{pid}/maps", text=True) as fh:
                if any(line.rstrip("\n").endswith(" " + real_path) for line in fh):
                    pids.append(pid)
        except (OSError, HostError):
            continue
    return tuple(pids)


def unload_model(host: Host, model: StoredModel) -> UnloadResult:
    if host.offline:
        raise ModelStoreError("models unload returns pages to the live huge-page pool; it does "
                              "not work with --root (remove the file from the tree instead)")
    users = users_of(host, str(host.path(model.path)))
    try:
        host.remove(model.path)
    except OSError as err:
        raise ModelStoreError(f"cannot remove {model.path}: {err.strerror}") from err
    except HostError as err:
        raise ModelStoreError(f"cannot remove {model.path}: {err}") from err
    return UnloadResult(model, not users, users)


# --- load ---------------------------------------------------------------------------------
class LoadResult(msgspec.Struct, frozen=True):
    model: StoredModel
    seconds: float  # the whole load: checks, create, copy, trailer, placement, link
    replaced: bool
    threads: int
    copy_seconds: float = 0.0  # the copy (and checksum) alone
    fill: str = "preadv"  # how the pages were filled: "userfaultfd" or "preadv"

    @property
    def rate_bytes_per_s(self) -> float:
        return self.model.true_size / self.seconds if self.seconds > 0 else 0.0


class _SourceId(msgspec.Struct, frozen=True):
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _SourceId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _fix_hint(host: Host, pool: PoolState, need: int, node: int | None) -> str:
    short = need - (pool.nodes.get(node, (0, 0))[1] if node is not None else pool.available)
    label = hugepage_size_label(pool.page_size)
    if node is not None:
        cur = pool.nodes.get(node, (0, 0))[0]
        cmd = (f"echo {cur + short} > /sys/devices/system/node/node{node}/hugepages/"
               f"{_kb_dir(pool.page_size)}/nr_hugepages")
    elif pool.page_size == _default_page(host):
        cmd = f"sysctl vm.nr_hugepages={pool.total + short}"
    else:
        cmd = (f"echo {pool.total + short} > /sys/kernel/mm/hugepages/"
               f"{_kb_dir(pool.page_size)}/nr_hugepages")
    return (f"grow the {label} pool by {short} pages: set hugepages.pools[].size in the profile "
            f"to at least {format_size((pool.total + short) * pool.page_size)} and run "
            f"`hosttune apply`, or run `{cmd}`")


class _Copy(msgspec.Struct):
    src_fd: int
    dst_fd: int
    view: memoryview
    size: int
    chunk: int
    node: int | None
    checksum: bool
    filler: kernel.PageFiller | None = None  # UFFDIO_COPY into the mapping, else preadv
    dst_addr: int = 0  # the mapping's address (for the filler)
    next_chunk: int = 0
    done: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    digests: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> int | None:
        with self.lock:
            i = self.next_chunk
            if self.cancel.is_set() or i * self.chunk >= self.size:
                return None
            self.next_chunk += 1
            return i

    def worker(self) -> None:
        bounce: _Bounce | None = None
        try:
            if self.node is not None:
                kernel.set_mempolicy_bind(self.node)
            if self.filler is not None:
                bounce = _Bounce(self.filler)
            while (i := self.take()) is not None:
                off = i * self.chunk
                n = min(self.chunk, self.size - off)
                if self.node is not None and self.filler is None:
                    # Allocate the chunk's pages first (on the bound node): ENOMEM/ENOSPC
                    # here instead of SIGBUS on the first touch through the mapping.
                    # (UFFDIO_COPY allocates each page itself and returns ENOMEM.)
                    kernel.fallocate(self.dst_fd, off, n)
                if not self._leaf(i, off, n, bounce):
                    return
        except BaseException as err:  # reported by the main thread
            with self.lock:
                self.errors.append(err)
            self.cancel.set()
        finally:
            if bounce is not None:
                bounce.close()

    def _leaf(self, i: int, off: int, n: int, bounce: _Bounce | None) -> bool:
        """Copy (and hash) leaf ``i``, one piece at a time; False if cancelled."""
        h = new_leaf() if self.checksum else None
        p = 0
        while p < n:
            k = min(PIECE, n - p)
            if bounce is None:
                # straight into the mapping (the kernel zeroes each fresh page first)
                self._read_piece(self.view[off + p:off + p + k], off + p, h)
            else:
                self._piece_filled(off + p, k, h, bounce)
            p += k
            with self.lock:
                self.done += k
            if self.cancel.is_set():
                return False
        if h is not None:
            with self.lock:
                self.digests[i] = h.intdigest()
        return True

    def _read_piece(self, part: memoryview, at: int, h: xxhash.xxh3_64 | None) -> None:
        """Read the source from ``at`` into ``part`` and hash it while it is in cache;
        ``part`` is released."""
        try:
            _read_exact(self.src_fd, part, at)
            if h is not None:
                h.update(part)
        finally:
            part.release()

    def _piece_filled(self, at: int, k: int, h: xxhash.xxh3_64 | None, bounce: _Bounce) -> None:
        # read the piece into this thread's page-sized buffer (it stays in cache), hash it
        # there, and have the kernel fill the store page from it without zeroing the page
        self._read_piece(bounce.view[:k], at, h)
        if k < PIECE:  # the file's last page: zero padding after the data
            bounce.view[k:] = bytes(PIECE - k)
        bounce.filler.copy(self.dst_addr + at, bounce.addr, PIECE)


def _read_exact(fd: int, buf: memoryview, at: int) -> None:
    got, k = 0, len(buf)
    while got < k:
        r = os.preadv(fd, [buf[got:]], at + got)
        if r == 0:
            raise ModelStoreError("the source file shrank during the copy")
        got += r


class _Bounce:
    """One copy thread's page-sized buffer for UFFDIO_COPY (anonymous memory, reused for
    every piece, so it stays in the core's cache)."""

    def __init__(self, filler: kernel.PageFiller) -> None:
        self.filler = filler
        self.mm = mmap.mmap(-1, PIECE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.addr = kernel.buffer_address(self.mm)
        self.view = memoryview(self.mm)

    def close(self) -> None:
        self.view.release()
        self.mm.close()


def load_model(
    host: Host,
    source: str,
    mount: StoreMount,
    *,
    name: str | None = None,
    node: int | None = None,
    replace: bool = False,
    checksum: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
) -> LoadResult:
    """Copy ``source`` into the store on ``mount`` (see the module docstring)."""
    if host.offline:
        raise ModelStoreError("models load fills the live huge-page pool; it does not work "
                              "with --root")
    name = name or os.path.basename(source)
    try:
        check_model_name(name)
    except ValueError as err:
        raise ModelStoreError(str(err)) from err
    mdir = str(host.path(mount.path))
    if not host.is_hugetlbfs(mount.path):
        raise ModelStoreError(_not_hugetlbfs(host, mount.path))
    if host.exists(f"{mount.path}/{name}") and not replace:
        raise ModelStoreError(f"name taken: {mount.path}/{name} already exists; use --replace, "
                              f"another --name, or `hosttune models unload {name}`")
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ModelStoreError(f"cannot read the source {source}: {err.strerror}") from err
    try:
        return _load_fd(host, source, src_fd, mount, mdir, name, node, replace, checksum,
                        threads, progress)
    finally:
        os.close(src_fd)


class _LoadPlan(msgspec.Struct, frozen=True):
    """What one load stores, fixed (and checked against the pool) before the store file is
    created."""

    source: str
    name: str
    mount: str  # the store mount (host path)
    node: int | None
    size: int  # the source's bytes
    page: int  # the mount's huge page size
    total: int  # the store file: data, zero padding and trailer, in whole pages
    need: int  # pages of the store file
    label: str  # the page size as messages name it
    before: _SourceId  # the source as the copy starts from it


def _plan_load(host: Host, source: str, src_fd: int, mount: StoreMount, name: str,
               node: int | None) -> _LoadPlan:
    st = os.fstat(src_fd)
    if not stat.S_ISREG(st.st_mode):
        raise ModelStoreError(f"cannot read the source {source}: not a regular file")
    if st.st_size == 0:
        raise ModelStoreError(f"the source {source} is empty")
    page = host.statvfs(mount.path).f_bsize
    total = stored_size(st.st_size, page)
    plan = _LoadPlan(source, name, mount.path, node, st.st_size, page, total, total // page,
                     hugepage_size_label(page), _SourceId.of(st))
    _check_room(host, plan)
    return plan


def _check_room(host: Host, plan: _LoadPlan) -> None:
    """Refuse a load that the pool (of the node) or the mount's size= limit cannot hold,
    before a single page is taken."""
    node, need, label = plan.node, plan.need, plan.label
    pool = pool_state(host, plan.page)
    if node is not None and node not in pool.nodes:
        raise ModelStoreError(f"NUMA node {node} does not exist or has no {label} pool "
                              f"(nodes: {', '.join(map(str, sorted(pool.nodes))) or 'none'})")
    free = pool.available if node is None else min(pool.nodes[node][1], pool.available)
    if need > free:
        where = f" on node {node}" if node is not None else ""
        raise ModelStoreError(
            f"not enough free {label} huge pages{where}: {plan.name} needs {need} "
            f"({format_size(plan.total)}), {free} free; " + _fix_hint(host, pool, need, node))
    vfs = host.statvfs(plan.mount)
    if vfs.f_blocks and vfs.f_bavail < need:
        raise ModelStoreError(
            f"the mount {plan.mount} is too small: {plan.name} needs {need} pages, the mount's "
            f"size= limit leaves {vfs.f_bavail}; raise its size in the profile (hugetlbfs "
            f"mounts[].size) and run `hosttune apply`, or `mount -o remount,size=... "
            f"{plan.mount}`")


def _load_fd(host: Host, source: str, src_fd: int, mount: StoreMount, mdir: str, name: str,
             node: int | None, replace: bool, checksum: bool, threads: int | None,
             progress: Progress | None) -> LoadResult:
    plan = _plan_load(host, source, src_fd, mount, name, node)
    tmp_name = f".{name}{TEMP_MARK}{os.getpid()}"
    tmp = f"{mdir}/{tmp_name}"  # the real path, as numa_maps names it
    tmp_hp, final_hp = f"{mount.path}/{tmp_name}", f"{mount.path}/{name}"
    nthreads = max(1, threads or min(4, os.cpu_count() or 1))
    t0 = time.monotonic()
    dst_fd = host.open_fd(tmp_hp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, regular=False)
    try:
        tr, per_node, copy_s, fill = _fill_store_file(host, plan, src_fd, dst_fd, tmp,
                                                      checksum, nthreads, progress)
        if node is not None and per_node and set(per_node) - {node}:
            raise ModelStoreError(f"pages of {name} landed outside node {node}: {per_node}")
        replaced = _publish(host, plan, tmp_hp, final_hp, replace)
    except BaseException:
        os.close(dst_fd)
        dst_fd = -1
        host.remove(tmp_hp)  # absent: nothing to do
        raise
    finally:
        if dst_fd >= 0:
            os.close(dst_fd)
    seconds = time.monotonic() - t0
    if progress is not None:
        progress(LoadProgress(plan.size, plan.size, copy_s))
    model = StoredModel(name, mount.path, plan.size, plan.total, plan.page, tr,
                        pages_per_node=per_node)
    return LoadResult(model, seconds, replaced, nthreads, copy_s, fill)


def _fill_store_file(host: Host, plan: _LoadPlan, src_fd: int, dst_fd: int, tmp: str,
                     checksum: bool, nthreads: int,
                     progress: Progress | None
                     ) -> tuple[Trailer, dict[int, int] | None, float, str]:
    """Map the store file, copy the source into it and write the trailer: (trailer, pages per
    node, seconds of the copy, how the pages were filled). The mapping is gone when this
    returns or raises, so that no view of it outlives the file's removal."""
    mm = _map_store_file(dst_fd, plan)
    view: memoryview | None = None
    try:
        view = memoryview(mm)
        job = _Copy(src_fd, dst_fd, view, plan.size, 1 << LEAF_LOG2, plan.node, checksum)
        copy_s = _copy_into(job, mm, nthreads, plan, progress)
        fill = "preadv" if job.filler is None else "userfaultfd"
        _check_source_unchanged(plan, src_fd)
        if plan.node is not None:
            _allocate_tail_on_node(plan, dst_fd)
        digest = combine([job.digests[i] for i in sorted(job.digests)]) if checksum else 0
        tr = Trailer(plan.size, plan.page, ALGO_XXH3_TREE if checksum else ALGO_NONE,
                     LEAF_LOG2 if checksum else 0, digest, int(time.time()))
        view[plan.total - TRAILER_LEN:plan.total] = tr.pack()
        # every page is faulted in this mapping now (the data reaches the last page but one
        # at least, the trailer is in the last): numa_maps counts them all without mapping
        # the file a second time
        per_node = _mapped_pages_per_node(host, dst_fd, tmp)
    finally:
        if view is not None:
            view.release()
        mm.close()
    return tr, per_node, copy_s, fill


def _copy_into(job: _Copy, mm: mmap.mmap, nthreads: int, plan: _LoadPlan,
               progress: Progress | None) -> float:
    """Run the copy, through UFFDIO_COPY where the kernel offers it for this mapping (2 MiB
    pages: the threads' buffers are one page), else with preadv straight into the mapping."""
    if plan.page == PIECE:
        job.dst_addr = kernel.buffer_address(mm)
        job.filler = kernel.PageFiller.register(job.dst_addr, plan.total)
    try:
        return _run_copy(job, nthreads, plan, progress)
    finally:
        if job.filler is not None:
            job.filler.close()  # before anything touches the mapping again (the trailer)


def _map_store_file(dst_fd: int, plan: _LoadPlan) -> mmap.mmap:
    try:
        os.ftruncate(dst_fd, plan.total)
        # MAP_SHARED reserves the pages of the whole file now (ENOMEM if the pool cannot
        # hold it): without a node binding no first touch can SIGBUS.
        return mmap.mmap(dst_fd, plan.total, flags=mmap.MAP_SHARED,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as err:
        raise ModelStoreError(f"cannot create {plan.mount}/{plan.name} ({plan.need} pages of "
                              f"{plan.label}): {err.strerror}") from err


def _run_copy(job: _Copy, nthreads: int, plan: _LoadPlan, progress: Progress | None) -> float:
    """Copy on ``nthreads`` workers while this thread reports progress (every 0.1 s) and
    takes Ctrl-C; the seconds of the copy. Every worker has stopped when this returns or
    raises."""
    workers = [threading.Thread(target=job.worker, name=f"hosttune-load-{i}", daemon=True)
               for i in range(nthreads)]
    try:
        t_copy = time.monotonic()
        for w in workers:
            w.start()
        if progress is not None:
            progress(LoadProgress(0, plan.size, 0.0))
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(0.1)
            if progress is not None:
                done = job.done  # read before the clock: the rate can only be lower
                progress(LoadProgress(done, plan.size, time.monotonic() - t_copy))
        copy_s = time.monotonic() - t_copy
    except KeyboardInterrupt as err:
        _stop(job, workers)
        raise LoadInterrupted(f"interrupted: {plan.name} was not stored; its {plan.need} huge "
                              "pages went back to the pool") from err
    finally:
        _stop(job, workers)
    if job.errors:
        err0 = job.errors[0]
        if isinstance(err0, ModelStoreError):
            raise err0
        if isinstance(err0, OSError):
            raise ModelStoreError(_copy_error(err0, plan.name, plan.need, plan.label,
                                              plan.node)) from err0
        raise ModelStoreError(f"loading {plan.name} failed: {err0!r}") from err0
    return copy_s


def _check_source_unchanged(plan: _LoadPlan, src_fd: int) -> None:
    """The source, through our descriptor and by its name, is still the file the copy
    started from: a writer still busy with it, or a file replaced by its name, is not
    stored."""
    after = _SourceId.of(os.fstat(src_fd))
    try:
        again = _SourceId.of(os.stat(plan.source))
    except OSError:
        again = None
    if after != plan.before or again != plan.before:
        raise ModelStoreError(f"the source {plan.source} changed during the copy (size, "
                              "modification time or inode); nothing was stored - load it "
                              "again once it is complete")


def _allocate_tail_on_node(plan: _LoadPlan, dst_fd: int) -> None:
    # The workers allocated the data's pages on the node (fallocate or UFFDIO_COPY under the
    # thread's binding); the pages after the data (padding, trailer) are allocated here,
    # bound to the node too, before the trailer is written through the mapping.
    kernel.set_mempolicy_bind(plan.node)
    try:
        kernel.fallocate(dst_fd, plan.size, plan.total - plan.size)
    except OSError as err:
        raise ModelStoreError(_copy_error(err, plan.name, plan.need, plan.label,
                                          plan.node)) from err
    finally:
        kernel.set_mempolicy_bind(None)


def _publish(host: Host, plan: _LoadPlan, tmp_hp: str, final_hp: str, replace: bool) -> bool:
    """Give the filled file its name; True if it replaced a model of that name."""
    replaced = host.exists(final_hp)
    if replace:
        host.rename(tmp_hp, final_hp)
    else:
        # link(2) fails if the name appeared meanwhile (another load): never overwrite.
        try:
            host.link(tmp_hp, final_hp)
        except FileExistsError as err:
            raise ModelStoreError(f"name taken: {plan.mount}/{plan.name} was stored by "
                                  "someone else during this load; nothing was changed") from err
        host.remove(tmp_hp)
    return replaced


def _stop(job: _Copy, workers: list[threading.Thread]) -> None:
    """Cancel and join every started worker, even through a second Ctrl-C: no worker may
    still hold a view of the mapping when it is unmapped."""
    job.cancel.set()
    for w in workers:
        while w.ident is not None and w.is_alive():
            try:
                w.join()
            except KeyboardInterrupt:
                continue


def _copy_error(err: OSError, name: str, need: int, label: str, node: int | None) -> str:
    where = f" on node {node}" if node is not None else ""
    if err.errno in (28, 12):  # ENOSPC, ENOMEM
        return (f"ran out of {label} huge pages{where} while loading {name} ({need} needed; "
                "another process took pages meanwhile?); nothing was stored")
    return f"loading {name} failed: {err.strerror or err}"


# --- pool planning ----------------------------------------------------------------------------
class PoolNeed(msgspec.Struct, frozen=True):
    page_size: int
    stored_pages: int
    planned_pages: int
    pool: PoolState
    mounts: dict[str, int]  # mount -> pages its models need
    mount_limits: dict[str, int | None]
    unknown: tuple[str, ...]  # declared models whose size is unknown

    @property
    def needed_pages(self) -> int:
        return self.stored_pages + self.planned_pages

    @property
    def short_pages(self) -> int:
        return max(0, self.needed_pages - self.pool.total)

    def short_mounts(self) -> list[str]:
        return [m for m, p in self.mounts.items()
                if (lim := self.mount_limits.get(m)) is not None and p * self.page_size > lim]


def pool_needs(host: Host, profile: Profile | None) -> list[PoolNeed]:
    """Pages (per huge page size) the stored models plus the profile's declared models that are
    not stored yet need, against the pool and each mount's size limit."""
    mounts = store_mounts(host, profile)
    by_path = {m.path: m for m in mounts}
    stored = list_models(host, mounts, nodes=False)
    names = {(m.mount, m.name) for m in stored}
    acc: dict[int, dict[str, list[int]]] = {}
    unknown: dict[int, list[str]] = {}

    def add(page: int, mount: str, pages: int, planned: bool) -> None:
        slot = acc.setdefault(page, {}).setdefault(mount, [0, 0])
        slot[1 if planned else 0] += pages

    for m in stored:
        add(m.page_size, m.mount, m.pages, False)
    declared = profile.models.declared if profile and profile.models else []
    for d in declared:
        mpath = d.mount or (profile.models.mount if profile and profile.models else None)
        if mpath is None:
            usable = [m for m in mounts if m.mounted] or mounts
            mpath = usable[0].path if usable else None
        if mpath is None or mpath not in by_path:
            raise ModelStoreError(f"models.declared {d.name}: mount {mpath or '(none)'} is not "
                                  "a hugetlbfs mount of the profile or the host")
        if (mpath, d.name) in names:
            continue
        page = by_path[mpath].page_size
        size: int | None = None
        if d.file and (fst := host.stat(d.file)) is not None and stat.S_ISREG(fst.st_mode):
            size = fst.st_size
        elif d.size is not None:
            size = parse_size(d.size)
        if size is None:
            unknown.setdefault(page, []).append(d.name)
            continue
        add(page, mpath, stored_size(size, page) // page, True)
    out: list[PoolNeed] = []
    for page in sorted(set(acc) | set(unknown)):
        per = acc.get(page, {})
        out.append(PoolNeed(
            page,
            sum(v[0] for v in per.values()), sum(v[1] for v in per.values()),
            pool_state(host, page), {k: v[0] + v[1] for k, v in per.items()},
            {k: by_path[k].limit_bytes for k in per}, tuple(unknown.get(page, ()))))
    return out
