"""Huge-page pools (2M, 1G) per NUMA node, and the transparent-huge-page mode.

Runtime only: the pools live in sysfs and are re-applied at boot by hosttune-boot.service
(tunables/bootunit.py). Facts this module relies on (kernel
Documentation/admin-guide/mm/hugetlbpage.rst, mm/hugetlb.c):

- Per-node pools: /sys/devices/system/node/nodeN/hugepages/hugepages-<kB>kB/nr_hugepages;
  the global counter /sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages interleaves over
  the nodes with memory.
- A write is a request, not a promise: the kernel allocates what it can and the write still
  succeeds. The first write often under-allocates on a fragmented host; compacting memory
  (/proc/sys/vm/compact_memory) between tries helps, so we retry and read back
  [openshift-kni/performance-addon-operators#279].
- Shrinking below the pages in use (mapped by processes, or held by files on hugetlbfs) also
  "succeeds": the kernel turns the in-use excess into surplus pages and nr_hugepages keeps
  reading the larger number until the files are deleted. So we never plan to shrink below
  in-use pages, and the read-back catches it if it happens anyway.
- 1 GiB pages need 1 GiB of physically contiguous free memory: after boot that is often not
  available; reserving them on the kernel command line (hugepagesz=1G hugepages=N) is
  reliable. The kernel command line belongs to the kernel-cmdline tunable: a pool with
  ``reserve: boot`` is reserved there (hugepagesz= hugepages=, boot_pools), and audit says
  whether a pool is allocated at runtime or reserved at boot. With ``reserve: auto`` (the
  default) a 1G pool is tried at runtime first; when the kernel gives fewer pages than asked
  at apply, the pool keeps what it got and falls back to the boot reservation: the fallback
  is recorded in the state dir (FALLBACK_FILE, journaled and undone by rollback) and the
  engine plans again, so the kernel_cmdline drop-in carries the pool from the same run.
- HugeTLB Vmemmap Optimization (HVO, Documentation/admin-guide/mm/vmemmap_dedup.rst,
  mm/hugetlb_vmemmap.c): every 4 KiB of RAM has a 64-byte struct page; with
  vm.hugetlb_optimize_vmemmap=1 the kernel frees the vmemmap pages of each huge page but one
  (7 of 8 for 2 MiB, 4095 of 4096 for 1 GiB) - 1.75 GiB on a 128 GiB pool of 2 MiB pages
  [ggml-org/llama.cpp PR 21821]. Only pages allocated while it is on are optimized, so it is
  set before the pools grow. The sysctl exists only with CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP
  (5.19+); 5.14-5.18 had only the boot parameter hugetlb_free_vmemmap=on.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import field

from hosttune.errors import ApplyError, HostError, ProfileError
from hosttune.host import Host
from hosttune.host.facts import read_cpulist
from hosttune.host.parsers import (
    parse_bracketed_choice,
    parse_cmdline,
    parse_mountinfo,
)
from hosttune.profile.sizes import (
    format_size,
    hugepage_size_label,
    parse_percent,
    parse_size,
)
from hosttune.tunables.base import Change, Context, Evaluation, Row, Status, Tunable, setting
from hosttune.tunables.knob import Knob, action

if TYPE_CHECKING:
    from collections.abc import Callable

    from hosttune.host.facts import HostFacts
    from hosttune.profile.schema import HugePagePool, HugePagesSection, HugetlbfsMount, Profile

PAGE_BYTES = {"2M": 2 * 1024**2, "1G": 1024**3}
NODE_DIR = "/sys/devices/system/node"
GLOBAL_DIR = "/sys/kernel/mm/hugepages"
THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
HVO_PATH = "/proc/sys/vm/hugetlb_optimize_vmemmap"
HVO_BOOT_WORD = "hugetlb_free_vmemmap=on"  # kernels with the option but without the sysctl
HVO_CONFIGS = ("CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP", "CONFIG_HUGETLB_PAGE_FREE_VMEMMAP")
BASE_PAGE = 4096
STRUCT_PAGE = 64  # sizeof(struct page) on 64-bit builds without debug options
COMPACT_PATH = "/proc/sys/vm/compact_memory"
FALLBACK_FILE = "hugepages-boot.json"  # in the state dir: pools that fell back to the boot
# Node meminfo may be much smaller than MemTotal when the hypervisor initialises memory lazily
# (seen on a cloud VM whose node0 showed ~3.8 GB of ~24 GB). Only trust per-node totals that
# add up.
NODE_TOTALS_TRUSTED = 0.9


def kb_dir(page_bytes: int) -> str:
    return f"hugepages-{page_bytes // 1024}kB"


def node_file(node: int, page_bytes: int, name: str = "nr_hugepages") -> str:
    return f"{NODE_DIR}/node{node}/hugepages/{kb_dir(page_bytes)}/{name}"


def global_file(page_bytes: int, name: str = "nr_hugepages") -> str:
    return f"{GLOBAL_DIR}/{kb_dir(page_bytes)}/{name}"


def read_int(host: Host, path: str) -> int | None:
    v = host.read_value(path)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def memory_nodes(host: Host) -> list[int]:
    """NUMA nodes with memory (has_memory), else every node in the facts."""
    nodes = read_cpulist(host, f"{NODE_DIR}/has_memory")
    return nodes or [n.id for n in host.facts.nodes]


def to_bytes(value: str | int, ram: int) -> int:
    """Bytes or a percentage of RAM."""
    if isinstance(value, str):
        p = parse_percent(value)
        if p is not None:
            return int(ram * p)
    return parse_size(value)


def pool_pages(value: str | int, page_bytes: int, ram: int) -> int:
    """Pool sizes: an int counts pages, bytes round up (hold that much), a percentage of RAM
    rounds down (stay under it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    assert isinstance(value, str)
    p = parse_percent(value)
    if p is not None:
        return int(ram * p) // page_bytes
    return math.ceil(parse_size(value) / page_bytes)


# --- resolving the profile (pools <-> mounts) -----------------------------------------------------
class PoolPlan(msgspec.Struct, frozen=True):
    index: int
    pool: HugePagePool
    page_bytes: int
    pages: int
    mode: str  # "nodes" (per node files) | "global" (the global counter)
    targets: dict[int, int] = field(default_factory=dict)  # node -> pages (mode "nodes")

    @property
    def key(self) -> str:
        return f"hugepages.pools.{self.index}"

    @property
    def bytes(self) -> int:
        return self.pages * self.page_bytes


class MountPlan(msgspec.Struct, frozen=True):
    index: int
    mount: HugetlbfsMount
    page_bytes: int
    pages: int  # the mount's size= limit in pages
    # The mount is its pool: the only mount of its page size, and one of the two is sized
    # 'auto' from the other. Its size= limit then equals the pool's size, which bounds an
    # unlimited mount just the same - true whatever the RAM, so an image can carry it.
    whole_pool: bool = False

    @property
    def key(self) -> str:
        return f"hugetlbfs.mounts.{self.index}"

    @property
    def bytes(self) -> int:
        return self.pages * self.page_bytes


class Resolved(msgspec.Struct, frozen=True):
    pools: dict[str, PoolPlan]  # pagesize label -> plan
    mounts: list[MountPlan]


def current_pool_pages(host: Host, page_bytes: int) -> int:
    """Persistent pages of a pool now (nr_hugepages - surplus)."""
    nr = read_int(host, global_file(page_bytes)) or 0
    surp = read_int(host, global_file(page_bytes, "surplus_hugepages")) or 0
    return max(nr - surp, 0)


class PoolSize(msgspec.Struct, frozen=True):
    """One pool's page count, before it is placed on nodes."""
    index: int
    pool: HugePagePool
    page_bytes: int
    pages: int
    explicit: dict[int, int] | None  # node -> pages where the profile names the nodes


def _mount_pages(m: HugetlbfsMount, ram: int) -> int:
    return to_bytes(m.size, ram) // PAGE_BYTES[m.pagesize]


def size_pools(profile: Profile, ram: int, nodes_with_memory: Callable[[], list[int]],
               error: Callable[[str, str], ProfileError]) -> dict[str, PoolSize]:
    """Page count of every pool in the profile (pagesize label -> size): the one sizing that
    apply, audit and the container planner share. Pure: RAM and the nodes with memory come
    from the caller; ``error(key, message)`` makes the ProfileError raised for sizes that
    cannot be resolved (both sides 'auto', unknown nodes)."""
    hp: HugePagesSection | None = profile.hugepages
    mounts = list(profile.hugetlbfs.mounts) if profile.hugetlbfs else []
    pool_by_size: dict[str, tuple[int, HugePagePool]] = {}
    for i, pool in enumerate(hp.pools if hp else []):
        if pool.pagesize in pool_by_size:
            raise error(f"hugepages.pools.{i}.pagesize",
                        f"a second {pool.pagesize} pool: one pool per page size")
        pool_by_size[pool.pagesize] = (i, pool)

    sizes: dict[str, PoolSize] = {}
    for label, (i, pool) in pool_by_size.items():
        pb = PAGE_BYTES[label]
        key = f"hugepages.pools.{i}"
        explicit: dict[int, int] | None = None
        if isinstance(pool.nodes, dict):
            explicit = {}
            with_mem = nodes_with_memory()
            for node, size in pool.nodes.items():
                if node not in with_mem:
                    raise error(f"{key}.nodes.{node}",
                                f"NUMA node {node} does not exist or has no memory on this "
                                f"host (nodes with memory: {with_mem})")
                try:
                    explicit[node] = pool_pages(size, pb, ram)
                except ValueError as err:
                    raise error(f"{key}.nodes.{node}", str(err)) from err
        if pool.size == "auto":
            if explicit is not None:
                pages = sum(explicit.values())
            else:
                same = [m for m in mounts if m.pagesize == label]
                if not same:
                    raise error(f"{key}.size", f"size 'auto' means what the {label} "
                                "hugetlbfs mounts hold, and the profile has none")
                for j, m in enumerate(mounts):
                    if m.pagesize == label and m.size == "auto":
                        raise error(f"hugetlbfs.mounts.{j}.size",
                                    f"both this mount and its pool ({key}.size) are "
                                    "'auto': give one of them a size")
                pages = sum(_mount_pages(m, ram) for m in same)
        else:
            pages = pool_pages(pool.size, pb, ram)
            if explicit is not None and sum(explicit.values()) != pages:
                raise error(f"{key}.nodes", f"the per-node sizes add up to "
                            f"{sum(explicit.values())} pages but size asks for {pages}; "
                            "set size: auto or make them agree")
        sizes[label] = PoolSize(i, pool, pb, pages, explicit)
    return sizes


def pool_bytes(profile: Profile, facts: HostFacts) -> int:
    """Bytes the profile's huge-page pools hold on a host with these facts (what apply
    allocates). Pure; raises ProfileError (no file) for sizes that cannot be resolved."""
    nodes = [n.id for n in facts.nodes if n.mem_total_bytes > 0] or [n.id for n in facts.nodes]
    sizes = size_pools(profile, facts.mem_total_bytes, lambda: nodes,
                       lambda key, msg: ProfileError(msg, key=key))
    return sum(s.pages * s.page_bytes for s in sizes.values())


def resolve(ctx: Context) -> Resolved:
    """Page counts of every pool and mount in the profile. Raises ProfileError for sizes that
    cannot be resolved (both sides 'auto', unknown nodes)."""
    prof = ctx.profile
    ram = ctx.facts.mem_total_bytes
    mounts = list(prof.hugetlbfs.mounts) if prof.hugetlbfs else []
    pools: dict[str, PoolPlan] = {}
    sizes = size_pools(prof, ram, lambda: memory_nodes(ctx.host), ctx.error)
    for label, sz in sizes.items():
        i, pool, pb, pages = sz.index, sz.pool, sz.page_bytes, sz.pages
        if sz.explicit is not None:
            pools[label] = PoolPlan(i, pool, pb, pages, "nodes", sz.explicit)
        elif pool.nodes == "any":
            pools[label] = PoolPlan(i, pool, pb, pages, "global")
        else:  # spread over the nodes with memory; the remainder goes to the first ones
            nodes = memory_nodes(ctx.host)
            base, extra = divmod(pages, len(nodes))
            pools[label] = PoolPlan(i, pool, pb, pages, "nodes",
                                    {n: base + (1 if k < extra else 0)
                                     for k, n in enumerate(nodes)})

    plans: list[MountPlan] = []
    for j, m in enumerate(mounts):
        pb = PAGE_BYTES[m.pagesize]
        if m.size != "auto":
            plans.append(MountPlan(j, m, pb, _mount_pages(m, ram),
                                   whole_pool=_is_whole_pool(m, mounts, sizes)))
            continue
        # 'auto' = the pool, less what explicitly sized mounts of that page size take, shared
        # evenly by the 'auto' mounts
        if m.pagesize in pools:
            pool_n = pools[m.pagesize].pages
        else:
            pool_n = current_pool_pages(ctx.host, pb)
        if pool_n == 0:
            raise ctx.error(f"hugetlbfs.mounts.{j}.size", f"size 'auto' means the {m.pagesize} "
                            "pool, and there is none (add a hugepages pool of that size)")
        same = [x for x in mounts if x.pagesize == m.pagesize]
        fixed = sum(_mount_pages(x, ram) for x in same if x.size != "auto")
        n_auto = sum(1 for x in same if x.size == "auto")
        plans.append(MountPlan(j, m, pb, max(pool_n - fixed, 0) // n_auto,
                               whole_pool=_is_whole_pool(m, mounts, sizes)))
    return Resolved(pools, plans)


def _is_whole_pool(m: HugetlbfsMount, mounts: list[HugetlbfsMount],
                   sizes: dict[str, PoolSize]) -> bool:
    """Is ``m`` the only mount of its page size, sized 'auto' from its pool or the pool
    sized 'auto' from it (MountPlan.whole_pool)? Decided from the profile alone."""
    if sum(1 for x in mounts if x.pagesize == m.pagesize) != 1 or m.pagesize not in sizes:
        return False
    sz = sizes[m.pagesize]
    return m.size == "auto" or (sz.pool.size == "auto" and sz.explicit is None)


# --- HugeTLB Vmemmap Optimization -----------------------------------------------------------------
def vmemmap_saved_per_page(page_bytes: int) -> int:
    """Bytes of struct-page memory HVO frees per huge page: its vmemmap less the one base page
    the kernel keeps mapped (HUGETLB_VMEMMAP_RESERVE_SIZE, mm/hugetlb_vmemmap.h)."""
    vmemmap = page_bytes // BASE_PAGE * STRUCT_PAGE
    return max(vmemmap - BASE_PAGE, 0)


def kernel_config(host: Host) -> dict[str, str] | None:
    """The running kernel's build options (/boot/config-RELEASE, else /proc/config.gz), or
    None when neither is readable."""
    import gzip

    from hosttune.host.distro import kernel_release

    rel = kernel_release(host)
    text = host.read_text(f"/boot/config-{rel}") if rel else None
    if text is None:
        try:
            raw = host.read_bytes("/proc/config.gz")
            if raw is None:
                return None
            text = gzip.decompress(raw).decode("utf-8", errors="replace")
        except (OSError, EOFError):  # BadGzipFile is an OSError; a cut stream an EOFError
            return None
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, eq, v = line.partition("=")
        if eq and k.startswith("CONFIG_"):
            out[k] = v
    return out


class HvoState(msgspec.Struct, frozen=True):
    mode: str  # "sysctl" | "boot" (only the boot parameter) | "unsupported" | "unknown"
    enabled: bool | None
    note: str = ""


def hvo_state(host: Host) -> HvoState:
    v = read_int(host, HVO_PATH)
    if v is not None:
        return HvoState("sysctl", v != 0)
    cfg = kernel_config(host)
    if cfg is None:
        return HvoState("unknown", None, "no vm.hugetlb_optimize_vmemmap and the kernel "
                        "config is unreadable (/boot/config-*, /proc/config.gz)")
    if not any(cfg.get(k) == "y" for k in HVO_CONFIGS):
        return HvoState("unsupported", False, "kernel built without "
                        "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP")
    tokens = parse_cmdline(host.read_text("/proc/cmdline") or "")
    on = any(t in ("hugetlb_free_vmemmap=on", "hugetlb_free_vmemmap=y") for t in tokens)
    return HvoState("boot", on, "this kernel has no vm.hugetlb_optimize_vmemmap: only the "
                    "boot parameter hugetlb_free_vmemmap=on")


def hvo_saved_bytes(host: Host) -> int | None:
    """Struct-page memory HVO saves on the pools now (None: HVO state unknown). An upper
    bound when HVO was turned on after some pages were allocated: those keep their vmemmap."""
    st = hvo_state(host)
    if st.enabled is None:
        return None
    if not st.enabled:
        return 0
    total = 0
    for d in host.listdir(GLOBAL_DIR):
        if d.startswith("hugepages-") and d.endswith("kB") and d[10:-2].isdigit():
            pb = int(d[10:-2]) * 1024
            total += (read_int(host, f"{GLOBAL_DIR}/{d}/nr_hugepages") or 0) \
                * vmemmap_saved_per_page(pb)
    return total


# --- the tunable ----------------------------------------------------------------------------------
class NodeState(msgspec.Struct, frozen=True):
    nr: int
    free: int
    surplus: int

    @property
    def in_use(self) -> int:
        return max(self.nr - self.free, 0)


def node_state(host: Host, node: int, page_bytes: int) -> NodeState | None:
    nr = read_int(host, node_file(node, page_bytes))
    if nr is None:
        return None
    return NodeState(nr, read_int(host, node_file(node, page_bytes, "free_hugepages")) or 0,
                     read_int(host, node_file(node, page_bytes, "surplus_hugepages")) or 0)


def global_state(host: Host, page_bytes: int) -> NodeState | None:
    nr = read_int(host, global_file(page_bytes))
    if nr is None:
        return None
    free = read_int(host, global_file(page_bytes, "free_hugepages")) or 0
    resv = read_int(host, global_file(page_bytes, "resv_hugepages")) or 0
    # reserved pages (mapped, not yet faulted) cannot be freed either: mm/hugetlb.c
    # set_max_huge_pages() keeps min_count = resv + nr - free
    return NodeState(nr, max(free - resv, 0),
                     read_int(host, global_file(page_bytes, "surplus_hugepages")) or 0)


def hugetlbfs_files(host: Host, page_bytes: int) -> dict[str, int]:
    """Pages held by files on the mounted hugetlbfs of this page size: {mount point: pages}.

    Live host only (a --root tree has no mounted hugetlbfs to look into). A file holds
    ceil(size / page) pages at most (sparse files less); its pages stay allocated until it is
    deleted, whether or not anything maps it - the usual reason a pool "will not shrink"."""
    if host.offline:
        return {}
    label = hugepage_size_label(page_bytes)
    default = hugepage_size_label(host.facts.default_hugepage_bytes)
    out: dict[str, int] = {}
    for m in parse_mountinfo(host.read_text("/proc/self/mountinfo") or ""):
        if m.fstype != "hugetlbfs" or m.options.get("pagesize", default) != label:
            continue
        pages = sum(math.ceil(f.st.st_size / page_bytes)
                    for f in host.walk_files(m.mount_point))
        if pages:
            out[m.mount_point] = pages
    return out


def _pages_desc(pages: int, page_bytes: int) -> str:
    return f"{pages} ({format_size(pages * page_bytes)})"


def boot_words(label: str, pages: int) -> list[str]:
    """Kernel parameters that reserve ``pages`` huge pages of ``label`` at boot. Order matters:
    hugepages=N counts pages of the hugepagesz= given before it (kernel-parameters.txt)."""
    return [f"hugepagesz={label}", f"hugepages={pages}"]


def boot_pools(ctx: Context) -> list[tuple[str, int]]:
    """(page size label, pages) of the profile's pools reserved at boot: ``reserve: boot``,
    and ``reserve: auto`` pools that fell back to it."""
    if ctx.profile.hugepages is None:
        return []
    return [(p.pool.pagesize, p.pages) for p in sorted(resolve(ctx).pools.values(),
                                                        key=lambda p: p.index)
            if reserve_mode(ctx, p) != "runtime"]


# --- reserve: auto - the runtime pool, or the boot reservation when the kernel falls short ------
def fallback_path(host: Host) -> str:
    return f"{host.state_dir}/{FALLBACK_FILE}"


def read_fallbacks(host: Host) -> dict[str, dict[str, Any]]:
    """{page size label: {"pages": asked, "got": allocated, "at": epoch}} of the pools whose
    runtime allocation fell short at an apply. Unreadable (audit without root: the state dir
    is 0700) or damaged reads as none."""
    try:
        text = host.read_text(fallback_path(host))
        data = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} \
        if isinstance(data, dict) else {}


def can_fall_back(ctx: Context, plan: PoolPlan) -> bool:
    """A ``reserve: auto`` 1G pool whose runtime shortfall can move to the kernel command line:
    the profile has a kernel_cmdline section that does not reserve 1G pages itself
    (hugepages_1g), the kernel spreads the pool (no per-node sizes) and this is a full apply
    (the boot unit's runtime-only re-apply writes no drop-in)."""
    sec = ctx.profile.kernel_cmdline
    return (plan.pool.reserve == "auto" and plan.pool.pagesize == "1G" and sec is not None
            and not sec.hugepages_1g and not isinstance(plan.pool.nodes, dict))


def reserve_mode(ctx: Context, plan: PoolPlan) -> str:
    """"runtime", "boot" (reserve: boot) or "fallback" (reserve: auto that fell back)."""
    if plan.pool.reserve == "boot":
        return "boot"
    if can_fall_back(ctx, plan) and plan.pool.pagesize in read_fallbacks(ctx.host):
        return "fallback"
    return "runtime"


def record_fallback(host: Host, label: str, asked: int, got: int) -> None:
    data = read_fallbacks(host)
    data[label] = {"pages": asked, "got": got, "at": int(time.time())}
    host.makedirs(host.state_dir, 0o700)
    host.write_file(fallback_path(host), (json.dumps(data, sort_keys=True) + "\n").encode(),
                    mode=0o600)


def restore_fallbacks(host: Host, text: str | None) -> None:
    """Put the fallback record back as it was before a change (None: there was none)."""
    if text is None:
        if host.exists(fallback_path(host)):
            host.remove(fallback_path(host))
    else:
        host.write_file(fallback_path(host), text.encode(), mode=0o600)


def _words_active(tokens: list[str], words: list[str]) -> bool:
    """Is the pair hugepagesz=X hugepages=N on the running kernel's command line, in order?"""
    low = [t.lower() for t in tokens]
    size, count = (w.lower() for w in words)
    return any(low[i] == size and low[i + 1] == count for i in range(len(low) - 1))


class PoolKnob(Knob):
    """A huge-page pool of one page size: its page count per target (a node, or 'any' for
    the global pool). Apply grows or shrinks it with retries (:func:`allocate`); with
    ``reserve: auto`` a shortfall keeps what the kernel gave and records the fallback, so the
    engine's second plan moves the pool to the kernel command line."""

    name = "pool"

    def read(self, host: Host) -> dict[str, Any]:
        pb = int(self.params["page_bytes"])
        out: dict[str, Any] = {"targets": {k: read_int(host, _target_path(k, pb)) or 0
                                           for k in self.params["targets"]}}
        if self.params.get("fallback"):
            out["fallback_record"] = host.read_text(fallback_path(host))
        return out

    def desired(self) -> dict[str, Any]:
        return {"targets": dict(self.params["targets"])}

    def _allocate(self, host: Host, targets: dict[str, Any]) -> None:
        allocate(host, int(self.params["page_bytes"]), {k: int(v) for k, v in targets.items()},
                 int(self.params.get("retries", 5)))

    def write(self, host: Host, value: dict[str, Any]) -> None:
        try:
            self._allocate(host, value["targets"])
        except ShortAllocation as err:
            if self.params.get("fallback") != "boot" or err.in_use:
                raise
            # reserve: auto - keep the pages the kernel gave (the store can use them now) and
            # reserve the pool at boot: the engine's second plan writes the drop-in
            record_fallback(host, str(self.params["label"]), int(self.params["pages"]),
                            sum(err.got.values()))

    def restore(self, host: Host, original: dict[str, Any]) -> None:
        self._allocate(host, original["targets"])  # a shortfall here is an error
        if "fallback_record" in original:
            restore_fallbacks(host, original["fallback_record"])


class HugePagesTunable(Tunable):
    name = "hugepages"
    section = "hugepages"
    knobs = (PoolKnob,)

    # -- checks before anything is written ----------------------------------------------------
    def validate(self, ctx: Context) -> None:
        sec = ctx.profile.hugepages
        assert sec is not None
        res = resolve(ctx)
        for plan in res.pools.values():
            if plan.pool.reserve != "boot":
                continue
            if ctx.profile.kernel_cmdline is None:
                raise ctx.error(f"{plan.key}.reserve", "reserve: boot puts the pool on the "
                                "kernel command line: add a kernel_cmdline section (it writes "
                                "the boot loader drop-in)")
            if isinstance(plan.pool.nodes, dict):
                raise ctx.error(f"{plan.key}.nodes", "a pool reserved at boot is spread over "
                                "the nodes by the kernel: use nodes: spread or any")
        ram = ctx.facts.mem_total_bytes
        if ram <= 0:
            return  # MemTotal unreadable: nothing to compare with (audit reports the error)
        try:
            floor = to_bytes(sec.min_free_ram, ram)
        except ValueError as err:
            raise ctx.error("hugepages.min_free_ram", str(err)) from err
        # pools the profile does not manage still take their memory
        unmanaged = sum(
            current_pool_pages(ctx.host, pb) * pb
            for label, pb in PAGE_BYTES.items() if label not in res.pools
        )
        total = unmanaged
        for plan in sorted(res.pools.values(), key=lambda p: p.index):
            total += plan.bytes
            key = f"{plan.key}.size" if plan.pool.size != "auto" or plan.mode == "global" \
                or not isinstance(plan.pool.nodes, dict) else f"{plan.key}.nodes"
            asked = f"{plan.pool.pagesize} pool of {_pages_desc(plan.pages, plan.page_bytes)}"
            if plan.pool.size == "auto" and not isinstance(plan.pool.nodes, dict):
                keys = [f"{m.key}.size" for m in res.mounts
                        if m.mount.pagesize == plan.pool.pagesize]
                asked += f" (size 'auto': what {', '.join(keys)} hold)"
            if total > ram:
                raise ctx.error(key, f"{asked} is larger than RAM ({format_size(ram)}"
                                + (f", {format_size(unmanaged)} already in other pools"
                                   if unmanaged else "") + ")")
            if ram - total < floor:
                raise ctx.error(key, f"{asked} would leave {format_size(ram - total)} for the "
                                f"OS, less than min_free_ram ({sec.min_free_ram} = "
                                f"{format_size(floor)})")
            self._check_nodes(ctx, plan)

    def _check_nodes(self, ctx: Context, plan: PoolPlan) -> None:
        nodes = {n.id: n.mem_total_bytes for n in ctx.facts.nodes}
        ram = ctx.facts.mem_total_bytes
        if sum(nodes.values()) < NODE_TOTALS_TRUSTED * ram:
            return  # lazily initialised node memory: per-node totals mean nothing yet
        for node, pages in plan.targets.items():
            have = nodes.get(node, 0)
            if pages * plan.page_bytes > have:
                key = (f"{plan.key}.nodes.{node}" if isinstance(plan.pool.nodes, dict)
                       else f"{plan.key}.size")
                raise ctx.error(key, f"{_pages_desc(pages, plan.page_bytes)} on node {node} is "
                                f"more than the node's memory ({format_size(have)})")

    # -- audit / plan ---------------------------------------------------------------------------
    def evaluate(self, ctx: Context) -> Evaluation:
        sec = ctx.profile.hugepages
        assert sec is not None
        host = ctx.host
        res = resolve(ctx)
        out = Evaluation()
        boot = ctx.profile.boot
        persist_note = ("re-applied at boot by hosttune-boot.service"
                        if boot is not None and boot.unit else
                        "runtime only: lost at reboot (boot.unit is off)")
        sysctl_note = self._sysctl_note(host)
        for label in sorted(res.pools, key=lambda s: PAGE_BYTES[s]):
            self._pool(ctx, label, res.pools[label], persist_note, sysctl_note, out.rows,
                       out.changes)
        if sec.thp is not None:
            out.add(*self._thp(host, sec.thp))
        if sec.optimize_vmemmap is not None:
            # first: HVO only optimizes pages allocated after it is on
            out.changes[:0] = self._hvo(host, sec.optimize_vmemmap, out.rows,
                                        ctx.profile.kernel_cmdline is not None)
        return out

    def _pool(self, ctx: Context, label: str, plan: PoolPlan, persist_note: str,
              sysctl_note: str, rows: list[Row], changes: list[Change]) -> None:
        """The rows of one pool (its total, or each node) and the change that sizes it."""
        host, pb = ctx.host, plan.page_bytes
        if pb not in ctx.facts.hugepage_sizes:
            rows.append(Row(self.name, f"{label} pool", "absent", _pages_desc(plan.pages, pb),
                            Status.UNSUPPORTED, f"this kernel/CPU has no {label} huge pages"))
            return
        files = hugetlbfs_files(host, pb)
        notes = [persist_note]
        if files:
            notes.append("held by hugetlbfs files: " + ", ".join(
                f"{mp} {n} pages" for mp, n in sorted(files.items())))
        if label == "1G":
            notes.append(self._cmdline_note(host, plan, can_fall_back(ctx, plan)))
        if sysctl_note and label == "2M":
            notes.append(sysctl_note)
        mode = reserve_mode(ctx, plan)
        if mode != "runtime":
            rows.append(self._boot_row(host, plan, files, mode))
            return
        where: list[tuple[str, int, NodeState | None, str, str]]  # target, pages, now, row
        if plan.mode == "global":
            st = global_state(host, pb)
            assert st is not None  # the size is in facts, so the directory exists
            where = [("any", plan.pages, st, f"{label} total", "the pool")]
        else:
            where = [(str(node), pages, node_state(host, node, pb), f"{label} node{node}",
                      f"node {node}") for node, pages in sorted(plan.targets.items())]
        targets: dict[str, int] = {}
        current: dict[str, int] = {}
        for target, pages, state, key, place in where:
            if state is None:
                rows.append(Row(self.name, key, "absent", _pages_desc(pages, pb),
                                Status.UNSUPPORTED, f"no {node_file(int(target), pb)}"))
                continue
            row_note = list(notes)
            if pages < state.in_use:
                row_note.append(self._in_use_note(state.in_use, pages, place))
            status = Status.OK if state.nr - state.surplus == pages else Status.DRIFT
            rows.append(Row(self.name, key, _pages_desc(state.nr, pb), _pages_desc(pages, pb),
                            status, "; ".join(row_note)))
            current[target] = state.nr
            want = max(pages, state.in_use)  # pages in use cannot be freed
            if state.nr - state.surplus != want:
                targets[target] = want
        if targets:
            changes.append(self._pool_change(ctx, label, plan, targets, current))

    def _pool_change(self, ctx: Context, label: str, plan: PoolPlan, targets: dict[str, int],
                     current: dict[str, int]) -> Change:
        sec = ctx.profile.hugepages
        assert sec is not None
        fallback = can_fall_back(ctx, plan) and not ctx.runtime_only
        desc = ", ".join(f"{'total' if k == 'any' else 'node' + k} "
                         f"{current.get(k, '?')} -> {v}" for k, v in targets.items())
        params: dict[str, Any] = {"page_bytes": plan.page_bytes, "targets": targets,
                                  "retries": sec.retries}
        if fallback:
            # the engine plans again after this step: a shortfall moves the pool to the
            # kernel_cmdline drop-in in the same run
            params.update(fallback="boot", label=label, pages=plan.pages, replan=True)
        return action(
            self.name, PoolKnob.name, id=f"hugepages/{label}",
            summary=f"huge pages {label}: {desc} pages"
            + (" (boot reservation if the kernel falls short)" if fallback else ""),
            runtime=True, params=params)

    def _boot_row(self, host: Host, plan: PoolPlan, files: dict[str, int],
                  mode: str = "boot") -> Row:
        """A pool the kernel reserves at boot (kernel_cmdline writes hugepagesz= hugepages=):
        nothing to write at runtime; audit says whether the running kernel has it (boot
        reservation active) or not yet (pending reboot), and for ``reserve: auto`` why."""
        label, pb = plan.pool.pagesize, plan.page_bytes
        have = current_pool_pages(host, pb)
        tokens = parse_cmdline(host.read_text("/proc/cmdline") or "")
        words = boot_words(label, plan.pages)
        active = _words_active(tokens, words)
        note = (f"boot reservation {'active' if active else 'pending reboot'}: reserved at "
                f"boot: kernel command line '{' '.join(words)}' (kernel_cmdline drop-in)")
        if mode == "fallback":
            fb = read_fallbacks(host).get(label, {})
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(fb.get("at", 0)))
            note += (f"; reserve: auto fell back to it: the kernel allocated {fb.get('got', '?')}"
                     f" of {fb.get('pages', '?')} pages at runtime ({when})")
        if files:
            note += "; held by hugetlbfs files: " + ", ".join(
                f"{mp} {n} pages" for mp, n in sorted(files.items()))
        needs: tuple[str, ...] = ()
        if have == plan.pages:
            st = Status.OK
        elif active:
            st = Status.DRIFT
            note += ("; the running kernel was booted with it but holds "
                     f"{have} pages (not enough contiguous memory at boot?)")
        else:
            st, needs = Status.NEEDS_REBOOT, ("reboot",)
        return Row(self.name, f"{label} total (boot)", _pages_desc(have, pb),
                   _pages_desc(plan.pages, pb), st, note, needs=needs)

    def _hvo(self, host: Host, want: bool, rows: list[Row], cmdline: bool) -> list[Change]:
        """vm.hugetlb_optimize_vmemmap; on a kernel with only the boot parameter, the
        kernel_cmdline drop-in carries hugetlb_free_vmemmap=on (``cmdline``: the profile has
        that section)."""
        st = hvo_state(host)
        desired = "on" if want else "off"
        cur = "?" if st.enabled is None else "on" if st.enabled else "off"
        key = "vm.hugetlb_optimize_vmemmap"
        per = ", ".join(f"{format_size(vmemmap_saved_per_page(pb))} per {lab} page"
                        for lab, pb in PAGE_BYTES.items())
        if st.mode == "unsupported" or (st.mode == "unknown" and want):
            rows.append(Row(self.name, key, "absent", desired, Status.UNSUPPORTED, st.note))
            return []
        if st.mode == "boot":
            ok = st.enabled == want
            if ok:
                status, how = Status.OK, ""
            elif want and cmdline:
                status, how = Status.NEEDS_REBOOT, (f" - the kernel_cmdline drop-in carries "
                                                    f"{HVO_BOOT_WORD}: active after a reboot")
            else:
                status = Status.DRIFT
                how = (f" - add a kernel_cmdline section (it writes {HVO_BOOT_WORD}) and "
                       "reboot" if want else " - remove it from the kernel command line")
            rows.append(Row(self.name, key, cur, desired, status, st.note + how,
                            needs=() if ok else ("reboot",)))
            return []
        ok = st.enabled == want
        saved = hvo_saved_bytes(host)
        note = (f"saves {per}; now {format_size(saved or 0)}; only pages allocated while it "
                "is on are optimized (set before the pools grow)")
        rows.append(Row(self.name, key, cur, desired, Status.OK if ok else Status.DRIFT, note))
        if ok:
            return []
        return [Change(id="hugepages/hvo", tunable=self.name, kind="kernel", path=HVO_PATH,
                       value="1" if want else "0", summary=f"{key}: {cur} -> {desired}",
                       runtime=True)]

    @staticmethod
    def _in_use_note(in_use: int, want: int, where: str) -> str:
        return (f"{in_use} pages in use on {where} (hugetlbfs files or mappings): cannot shrink "
                f"to {want} - the kernel would accept the write and keep them as surplus pages; "
                "delete the files first")

    @staticmethod
    def _cmdline_note(host: Host, plan: PoolPlan, fallback: bool) -> str:
        tokens = parse_cmdline(host.read_text("/proc/cmdline") or "")
        if any(t.lower() in ("hugepagesz=1g", "hugepagesz=1024m") for t in tokens):
            return "allocated at runtime; 1G pages are reserved on the kernel command line too"
        if fallback:
            return ("allocated at runtime (reserve: auto): if the kernel cannot find 1 GiB of "
                    "contiguous memory, apply keeps what it got and reserves the pool on the "
                    f"kernel command line ('hugepagesz=1G hugepages={plan.pages}', "
                    "kernel_cmdline drop-in; active after a reboot)")
        return ("allocated at runtime; if the kernel cannot find 1 GiB of contiguous memory "
                f"(apply falls short), set {plan.key}.reserve: boot to reserve them on the "
                f"kernel command line ('hugepagesz=1G hugepages={plan.pages}', written by the "
                "kernel_cmdline section)")

    @staticmethod
    def _sysctl_note(host: Host) -> str:
        """A vm.nr_hugepages line in a sysctl file fights the per-node pool: systemd-sysctl sets the
        global pool at boot, and hosttune-boot.service sets the nodes after it."""
        from hosttune.tunables.sysctl import boot_assignments

        try:
            hits = [s for s in boot_assignments(host) if s.a.key == "vm.nr_hugepages"]
        except OSError:
            return ""
        if not hits:
            return ""
        s = hits[-1]
        return (f"{s.file}:{s.a.lineno} also sets vm.nr_hugepages = {s.a.value} at boot "
                "(global, before hosttune-boot.service re-applies this pool): remove it")

    def _thp(self, host: Host, want: str) -> tuple[Row, Change | None]:
        text = host.read_value(THP_PATH)
        if text is None:
            return Row(self.name, "thp", "absent", want, Status.UNSUPPORTED,
                       "kernel without transparent huge pages"), None
        selected, choices = parse_bracketed_choice(text)
        if want not in choices:
            return Row(self.name, "thp", str(selected), want, Status.UNSUPPORTED,
                       f"choices here: {' '.join(choices)}"), None
        return setting(self.name, "thp", str(selected), want, Change(
            id="hugepages/thp", tunable=self.name, kind="choice", path=THP_PATH,
            value=want, summary=f"transparent_hugepage/enabled: {selected} -> {want}",
            runtime=True))


def _target_path(key: str, page_bytes: int) -> str:
    return global_file(page_bytes) if key == "any" else node_file(int(key), page_bytes)


class ShortAllocation(ApplyError):
    """The kernel allocated fewer (or freed fewer) pages than asked; ``got`` per target."""

    def __init__(self, msg: str, got: dict[str, int], in_use: bool) -> None:
        super().__init__(msg)
        self.got = got
        self.in_use = in_use


def allocate(host: Host, page_bytes: int, targets: dict[str, int], retries: int) -> None:
    """Write per-node (or global: key 'any') pool sizes, read them back, compact memory and
    retry while the kernel under-allocates. Raises ApplyError naming asked vs got per node."""
    paths = {k: _target_path(k, page_bytes) for k in targets}
    got: dict[str, int] = {}
    tries = 0
    for attempt in range(max(retries, 1)):
        tries = attempt + 1
        current = {k: read_int(host, p) or 0 for k, p in paths.items()}
        # shrink first: freed pages may be what another node's growth needs
        for k in sorted(targets, key=lambda k: targets[k] - current[k]):
            if current[k] != targets[k]:
                host.write_kernel(paths[k], str(targets[k]))
        got = {k: read_int(host, p) or 0 for k, p in paths.items()}
        if got == targets:
            return
        if any(got[k] > targets[k] for k in targets):
            break  # pages in use cannot be freed: retrying does not help
        if host.offline or attempt == retries - 1:
            break
        try:  # defragment so the next write finds contiguous 2M/1G blocks
            host.write_kernel(COMPACT_PATH, "1")
        except HostError:
            pass
    detail = ", ".join(
        f"{'total' if k == 'any' else 'node' + k}: asked {targets[k]}, got {got.get(k, '?')}"
        for k in sorted(targets))
    in_use = any(got.get(k, 0) > v for k, v in targets.items())
    why = "pages in use cannot be freed" if in_use else "not enough free contiguous memory"
    raise ShortAllocation(f"huge pages {format_size(page_bytes)}: allocation fell short after "
                          f"{tries} tr{'y' if tries == 1 else 'ies'} ({why}) - {detail}",
                          got, in_use)

