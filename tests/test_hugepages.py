"""Huge-page pools and THP on the fake trees: sizing, NUMA split, refusals, retry/verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from hosttune import engine
from hosttune.errors import ApplyError, ProfileError
from hosttune.host import Host
from hosttune.profile import load_profile
from hosttune.tunables.base import Context, Status
from hosttune.tunables.hugepages import HugePagesTunable, allocate, resolve
from tests.helpers import snapshot

MiB2 = 2 * 1024**2
GiB = 1024**3


def write_profile(tmp: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def nr(tree: Path, node: int, kb: int = 2048) -> int:
    return int((tree / f"sys/devices/system/node/node{node}/hugepages/hugepages-{kb}kB/"
                "nr_hugepages").read_text())


POOL = """name: t
hugepages:
  pools:
    - pagesize: 2M
      size: {size}
      nodes: {nodes}
  min_free_ram: {floor}
  thp: {thp}
"""


def pool_profile(tmp: Path, size: str = "8GiB", nodes: str = "spread", floor: str = "8GiB",
                 thp: str = "null", extra: str = "") -> Path:
    return write_profile(tmp, POOL.format(size=size, nodes=nodes, floor=floor, thp=thp) + extra)


def ctx_for(tree: Path, prof: Path) -> Context:
    return Context(Host(tree), load_profile(str(prof)))


# --- sizing ---
@pytest.mark.parametrize(("size", "pages"), [
    ("4096", 4096), ("8GiB", 4096), ("10%", int(128 * GiB * 0.10) // MiB2), ("3M", 2)])
def test_pool_sizes(ryzen, tmp_path, size, pages):
    res = resolve(ctx_for(ryzen, pool_profile(tmp_path, size=size)))
    assert res.pools["2M"].pages == pages
    assert res.pools["2M"].targets == {0: pages}


def test_spread_over_two_nodes_and_remainder(epyc, tmp_path):
    res = resolve(ctx_for(epyc, pool_profile(tmp_path, size="4097")))
    assert res.pools["2M"].targets == {0: 2049, 1: 2048}


def test_explicit_nodes_and_any(epyc, tmp_path):
    res = resolve(ctx_for(epyc, pool_profile(tmp_path, size="auto", nodes="{0: 2GiB, 1: 100}")))
    assert res.pools["2M"].targets == {0: 1024, 1: 100}
    assert res.pools["2M"].pages == 1124
    res = resolve(ctx_for(epyc, pool_profile(tmp_path, size="1000", nodes="any")))
    assert res.pools["2M"].mode == "global" and res.pools["2M"].pages == 1000


def test_explicit_nodes_must_agree_with_size_and_exist(epyc, tmp_path):
    with pytest.raises(ProfileError) as ei:
        resolve(ctx_for(epyc, pool_profile(tmp_path, size="10", nodes="{0: 4, 1: 4}")))
    assert ei.value.key == "hugepages.pools.0.nodes"
    with pytest.raises(ProfileError) as ei:
        resolve(ctx_for(epyc, pool_profile(tmp_path, size="auto", nodes="{0: 4, 7: 4}")))
    assert ei.value.key == "hugepages.pools.0.nodes.7"


def test_auto_follows_the_mounts(ryzen, tmp_path):
    prof = pool_profile(tmp_path, size="auto", extra="""hugetlbfs:
  mounts:
    - {path: /srv/a, size: 10GiB}
    - {path: /srv/b, size: 5%}
""")
    res = resolve(ctx_for(ryzen, prof))
    assert res.pools["2M"].pages == 5120 + int(128 * GiB * 0.05) // MiB2


def test_auto_on_both_sides_is_refused(ryzen, tmp_path):
    prof = pool_profile(tmp_path, size="auto", extra="hugetlbfs:\n  mounts:\n"
                        "    - {path: /srv/a, size: auto}\n")
    with pytest.raises(ProfileError) as ei:
        resolve(ctx_for(ryzen, prof))
    assert ei.value.key == "hugetlbfs.mounts.0.size"
    assert ei.value.file == str(prof)


def test_inference_profile_sizes_pool_from_the_40pc_mount(any_tree):
    ctx = Context(Host(any_tree), load_profile("inference"))
    res = resolve(ctx)
    ram = ctx.facts.mem_total_bytes
    assert res.pools["2M"].pages == int(ram * 0.40) // MiB2
    assert res.mounts[0].pages == res.pools["2M"].pages


# --- refusals: named file and key, nothing written ---
@pytest.mark.parametrize(("size", "floor", "words"), [
    ("200GiB", "8GiB", "larger than RAM"),
    ("120GiB", "16GiB", "less than min_free_ram"),
    ("95%", "10%", "less than min_free_ram"),
])
def test_refusals_write_nothing(ryzen, tmp_path, size, floor, words):
    prof = pool_profile(tmp_path, size=size, floor=floor, thp="never")
    before = snapshot(ryzen)
    with pytest.raises(ProfileError) as ei:
        engine.apply(Host(ryzen), load_profile(str(prof)))
    err = str(ei.value)
    assert f"{prof}: hugepages.pools.0.size:" in err, err
    assert words in err
    assert snapshot(ryzen) == before


def test_ryzen_profile_refused_on_the_small_vm_names_builtin_file(vm):
    with pytest.raises(ProfileError) as ei:
        engine.audit(Host(vm), load_profile("ryzen9950x-rtx5090"))
    err = str(ei.value)
    assert "builtin:ryzen9950x-rtx5090: hugepages.pools.0.size:" in err
    assert "larger than RAM" in err


def test_other_pools_count_against_the_floor(ryzen, tmp_path):
    # 100 GiB already sits in an unmanaged 1G pool: a 20 GiB 2M pool leaves 8 GiB
    (ryzen / "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages").write_text("100\n")
    prof = pool_profile(tmp_path, size="20GiB", floor="16GiB")
    with pytest.raises(ProfileError, match="less than min_free_ram"):
        engine.plan(Host(ryzen), load_profile(str(prof)))


def test_node_larger_than_its_memory_is_refused(epyc, tmp_path):
    prof = pool_profile(tmp_path, size="auto", nodes="{0: 300GiB}", floor="1GiB")
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(epyc), load_profile(str(prof)))
    assert ei.value.key == "hugepages.pools.0.nodes.0"
    assert "more than the node's memory" in str(ei.value)


def test_lazily_initialised_node_memory_is_not_trusted(vm, tmp_path):
    """This VM: node0 meminfo shows ~4 GB of ~24 GB; a 6 GiB pool on node0 is fine."""
    prof = pool_profile(tmp_path, size="6GiB", floor="4GiB")
    engine.plan(Host(vm), load_profile(str(prof)))  # no ProfileError


# --- apply / verify / rollback on the trees ---
def test_apply_spread_idempotent_and_exact_rollback(epyc, tmp_path):
    prof = pool_profile(tmp_path, size="90GiB", thp="madvise")
    before = snapshot(epyc)
    rep = engine.apply(Host(epyc), load_profile(str(prof)))
    assert rep.ok, rep.error
    assert (nr(epyc, 0), nr(epyc, 1)) == (23040, 23040)
    assert "[madvise]" in (epyc / "sys/kernel/mm/transparent_hugepage/enabled").read_text()
    assert not engine.audit(Host(epyc), load_profile(str(prof))).drift
    assert engine.apply(Host(epyc), load_profile(str(prof))).steps == []
    assert engine.rollback(Host(epyc)).ok
    assert snapshot(epyc) == before


def test_any_writes_the_global_counter(epyc, tmp_path):
    prof = pool_profile(tmp_path, size="1000", nodes="any")
    rep = engine.apply(Host(epyc), load_profile(str(prof)))
    assert rep.ok
    assert (epyc / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text() \
        == "1000\n"
    assert nr(epyc, 0) == 0


def test_in_use_pages_are_never_shrunk_below(ryzen, tmp_path):
    base = ryzen / "sys/devices/system/node/node0/hugepages/hugepages-2048kB"
    (base / "nr_hugepages").write_text("1000\n")
    (base / "free_hugepages").write_text("200\n")  # 800 pages held by hugetlbfs files
    ev = HugePagesTunable().evaluate(ctx_for(ryzen, pool_profile(tmp_path, size="100")))
    (row,) = [r for r in ev.rows if r.key == "2M node0"]
    assert row.status == Status.DRIFT
    assert "800 pages in use" in row.note and "surplus" in row.note
    (ch,) = [c for c in ev.changes if c.id == "hugepages/2M"]
    assert ch.params["targets"] == {"0": 800}


class UnderAllocating(Host):
    """A host whose kernel gives only part of a growing pool per write (fragmented memory),
    like the real first write can; every compaction makes ``per_try`` more pages possible."""

    def __init__(self, root: Path, per_try: int) -> None:
        super().__init__(root)
        self.offline = False  # behave like the live system (retries + compaction)
        self.per_try = per_try
        self.limit = per_try
        self.compactions = 0

    def write_kernel(self, p: str, value: str) -> None:
        if p.endswith("compact_memory"):
            self.compactions += 1
            self.limit += self.per_try
        elif p.endswith("nr_hugepages"):
            value = str(min(int(value), self.limit))
        super().write_kernel(p, value)


def test_allocation_retries_with_compaction_until_allocated(ryzen):
    h = UnderAllocating(ryzen, per_try=300)
    allocate(h, MiB2, {"0": 1000}, retries=5)
    assert nr(ryzen, 0) == 1000
    assert h.compactions == 3


def test_allocation_shortfall_names_asked_and_got_and_reverts(epyc, tmp_path):
    prof = pool_profile(tmp_path, size="2000", floor="1GiB")
    h = UnderAllocating(epyc, per_try=100)
    h.runner.offline = True
    rep = engine.apply(h, load_profile(str(prof)))
    assert not rep.ok
    assert "node0: asked 1000, got 500" in rep.error
    assert "node1: asked 1000, got 500" in rep.error
    assert "after 5 tries" in rep.error
    assert (nr(epyc, 0), nr(epyc, 1)) == (0, 0)  # reverted
    assert [s.status for s in rep.steps] == ["failed", "reverted"]


def test_shrink_blocked_by_in_use_pages_fails_clearly(ryzen):
    class Sticky(Host):
        def write_kernel(self, p: str, value: str) -> None:  # kernel keeps 50 as surplus
            super().write_kernel(p, str(max(int(value), 50)) if "nr_huge" in p else value)

    with pytest.raises(ApplyError, match="pages in use cannot be freed"):
        allocate(Sticky(ryzen), MiB2, {"0": 10}, retries=5)


# --- notes ---
def test_seed_sysctl_nr_hugepages_is_reported(ryzen, tmp_path):
    (ryzen / "etc/sysctl.conf").write_text("vm.nr_hugepages=46080\n")
    ev = HugePagesTunable().evaluate(ctx_for(ryzen, pool_profile(tmp_path)))
    assert "/etc/sysctl.conf:1 also sets vm.nr_hugepages = 46080" in ev.rows[0].note


def test_1g_pool_notes_the_kernel_cmdline(ryzen, tmp_path):
    prof = write_profile(tmp_path, "name: t\nhugepages:\n  pools:\n    - {pagesize: 1G, size: 4}\n")
    ev = HugePagesTunable().evaluate(ctx_for(ryzen, prof))
    (row,) = [r for r in ev.rows if r.key == "1G node0"]
    assert "hugepagesz=1G hugepages=4" in row.note
    rep = engine.apply(Host(ryzen), load_profile(str(prof)))
    assert rep.ok and nr(ryzen, 0, 1048576) == 4


def test_unsupported_page_size(ryzen, tmp_path):
    import shutil

    shutil.rmtree(ryzen / "sys/kernel/mm/hugepages/hugepages-1048576kB")
    prof = write_profile(tmp_path, "name: t\nhugepages:\n  pools:\n    - {pagesize: 1G, size: 4}\n")
    ev = HugePagesTunable().evaluate(ctx_for(ryzen, prof))
    assert ev.rows[0].status == Status.UNSUPPORTED and not ev.changes[:-1]


def test_audit_rows(ryzen, tmp_path):
    prof = pool_profile(tmp_path, thp="never")
    rep = engine.audit(Host(ryzen), load_profile(str(prof)))
    assert rep.drift
    rows = {r.key: r for r in rep.rows}
    assert rows["2M node0"].desired == "4096 (8 GiB)"
    assert rows["thp"].current == "always" and rows["thp"].status == Status.DRIFT


# --- HugeTLB Vmemmap Optimization ----------------------------------------------------------------
def test_vmemmap_saved_per_page():
    from hosttune.tunables.hugepages import vmemmap_saved_per_page

    assert vmemmap_saved_per_page(MiB2) == 7 * 4096  # 8 vmemmap pages, one kept
    assert vmemmap_saved_per_page(GiB) == 4095 * 4096
    # llama.cpp PR 21821: ~1.75 GiB on a 128 GiB pool of 2 MiB pages
    assert 128 * GiB // MiB2 * vmemmap_saved_per_page(MiB2) == int(1.75 * GiB)


HVO = "name: t\nhugepages:\n  pools: []\n  thp: null\n  optimize_vmemmap: true\n"


def test_hvo_sysctl_drift_apply_rollback(ryzen, tmp_path):
    sysctl = ryzen / "proc/sys/vm/hugetlb_optimize_vmemmap"
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    sysctl.write_text("0\n")
    prof = load_profile(str(write_profile(tmp_path, HVO)))
    host = Host(ryzen, state_dir=str(tmp_path / "state"))
    rep = engine.audit(host, prof, only={"hugepages"})
    (row,) = [r for r in rep.rows if r.key == "vm.hugetlb_optimize_vmemmap"]
    assert (row.current, row.desired, row.status) == ("off", "on", Status.DRIFT)
    ap = engine.apply(host, prof, runtime_only=True, only={"hugepages"})
    assert ap.ok, ap.error
    assert sysctl.read_text().strip() == "1"
    assert not engine.audit(host, prof, only={"hugepages"}).drift
    assert engine.rollback(Host(ryzen, state_dir=str(tmp_path / "state"))).ok
    assert sysctl.read_text().strip() == "0"


def test_hvo_saved_bytes_on_the_pools(ryzen):
    from hosttune.tunables.hugepages import hvo_saved_bytes, vmemmap_saved_per_page

    sysctl = ryzen / "proc/sys/vm/hugetlb_optimize_vmemmap"
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    sysctl.write_text("1\n")
    (ryzen / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").write_text("100\n")
    got = hvo_saved_bytes(Host(ryzen))
    pages_1g = int((ryzen / "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
                   .read_text())
    assert got == 100 * vmemmap_saved_per_page(MiB2) + pages_1g * vmemmap_saved_per_page(GiB)
    sysctl.write_text("0\n")
    assert hvo_saved_bytes(Host(ryzen)) == 0


@pytest.mark.parametrize(("config", "cmdline", "status"), [
    ("CONFIG_HUGETLB_PAGE=y\n# CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP is not set\n", "",
     Status.UNSUPPORTED),
    ("CONFIG_HUGETLB_PAGE_FREE_VMEMMAP=y\n", "ro quiet", Status.DRIFT),
    ("CONFIG_HUGETLB_PAGE_FREE_VMEMMAP=y\n", "ro hugetlb_free_vmemmap=on", Status.OK),
])
def test_hvo_without_the_sysctl(ryzen, tmp_path, config, cmdline, status):
    """Kernels before 5.19 have only the boot parameter; without the config option it is
    unsupported."""
    (ryzen / "proc/sys/vm/hugetlb_optimize_vmemmap").unlink(missing_ok=True)
    rel = "6.1.0-test"
    (ryzen / "proc/sys/kernel/osrelease").write_text(rel + "\n")
    (ryzen / "boot").mkdir(exist_ok=True)
    (ryzen / f"boot/config-{rel}").write_text(config)
    (ryzen / "proc/cmdline").write_text(cmdline + "\n")
    rep = engine.audit(Host(ryzen), load_profile(str(write_profile(tmp_path, HVO))),
                       only={"hugepages"})
    (row,) = [r for r in rep.rows if r.key == "vm.hugetlb_optimize_vmemmap"]
    assert row.status == status, row
    if status == Status.UNSUPPORTED:
        assert "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP" in row.note
    if status == Status.DRIFT:
        assert "hugetlb_free_vmemmap=on" in row.note and row.needs == ("reboot",)
        # with a kernel_cmdline section the drop-in carries the parameter
        prof = load_profile(str(write_profile(tmp_path, HVO + "kernel_cmdline: {}\n", "k.yaml")))
        rep = engine.audit(Host(ryzen), prof, only={"hugepages", "kernel_cmdline"})
        (row,) = [r for r in rep.rows if r.key == "vm.hugetlb_optimize_vmemmap"]
        assert row.status == Status.NEEDS_REBOOT
        assert "hugetlb_free_vmemmap=on" in [r.key for r in rep.rows
                                             if r.tunable == "kernel_cmdline"]


# --- pools reserved at boot -----------------------------------------------------------------------
BOOT = """name: t
hugepages:
  pools:
    - pagesize: 1G
      size: 4GiB
      nodes: any
      reserve: boot
  min_free_ram: 8GiB
  thp: null
kernel_cmdline:
  default_hugepagesz: 1G
"""


def test_boot_pool_goes_to_the_kernel_cmdline(ryzen, tmp_path):
    (ryzen / "proc/cmdline").write_text("ro quiet\n")
    (ryzen / "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages").write_text("0\n")
    prof = load_profile(str(write_profile(tmp_path, BOOT)))
    host = Host(ryzen)
    rep = engine.audit(host, prof, only={"hugepages", "kernel_cmdline"})
    (row,) = [r for r in rep.rows if r.tunable == "hugepages" and "1G" in r.key]
    assert row.status == Status.NEEDS_REBOOT and "reserved at boot" in row.note
    assert "hugepagesz=1G hugepages=4" in row.note
    words = [r.key for r in rep.rows if r.tunable == "kernel_cmdline"]
    assert words[-3:] == ["default_hugepagesz=1G", "hugepagesz=1G", "hugepages=4"]
    plan = engine.plan(host, prof, only={"hugepages", "kernel_cmdline"})
    assert not [c for c in plan.changes if c.tunable == "hugepages"]  # nothing at runtime
    drop_in = [c for c in plan.changes if c.tunable == "kernel_cmdline" and c.kind == "file"]
    assert drop_in and "hugepagesz=1G hugepages=4" in (drop_in[0].value or "")
    # the consumer: grub-mkconfig sources /etc/default/grub, then the drop-in, as sh
    import subprocess

    (tmp_path / "grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    (tmp_path / "90-hosttune.cfg").write_text(drop_in[0].value or "")
    out = subprocess.run(["sh", "-c", '. "$1"; . "$2"; echo "$GRUB_CMDLINE_LINUX_DEFAULT"',
                          "sh", str(tmp_path / "grub"), str(tmp_path / "90-hosttune.cfg")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["quiet", "default_hugepagesz=1G", "hugepagesz=1G", "hugepages=4"]
    # booted with it: the pool is there, audit says so
    (ryzen / "proc/cmdline").write_text("ro default_hugepagesz=1G hugepagesz=1G hugepages=4\n")
    (ryzen / "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages").write_text("4\n")
    rep = engine.audit(host, prof, only={"hugepages"})
    (row,) = [r for r in rep.rows if "1G" in r.key]
    assert row.status == Status.OK


def test_boot_pool_needs_the_kernel_cmdline_section(ryzen, tmp_path):
    text = BOOT.split("kernel_cmdline:")[0]
    with pytest.raises(ProfileError, match="kernel_cmdline section"):
        engine.audit(Host(ryzen), load_profile(str(write_profile(tmp_path, text))),
                     only={"hugepages"})
    both = BOOT + "  hugepages_1g: 2\n"
    with pytest.raises(ProfileError, match="keep one of them"):
        engine.audit(Host(ryzen), load_profile(str(write_profile(tmp_path, both, "b.yaml"))),
                     only={"kernel_cmdline"})


# --- reserve: auto - runtime first, the boot reservation when the kernel falls short ----------
AUTO = """name: t
hugepages:
  pools:
    - {pagesize: 1G, size: 4}
  min_free_ram: 8GiB
  thp: null
kernel_cmdline: {}
"""


class Fragmented(Host):
    """A kernel that finds only ``cap`` contiguous GiB: the write succeeds, nr_hugepages reads
    back fewer (mm/hugetlb.c set_max_huge_pages stops at the first failed allocation); the
    global counter follows the node's as in sysfs."""

    def __init__(self, root: Path, cap: int) -> None:
        super().__init__(root, state_dir=str(root / "var/lib/hosttune-state"))
        self.offline = False  # behave like the live system (retries + compaction)
        self.runner.offline = True  # but run no boot loader tool
        self.cap = cap

    def write_kernel(self, p: str, value: str) -> None:
        if p.endswith("nr_hugepages") and "1048576kB" in p:
            value = str(min(int(value), self.cap))
            super().write_kernel(GIG_GLOBAL, value)
        super().write_kernel(p, value)


GIG_GLOBAL = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"


def _gig_row(rep) -> object:
    (row,) = [r for r in rep.rows if r.tunable == "hugepages" and r.key.startswith("1G")]
    return row


def test_auto_1g_pool_falls_back_to_a_boot_reservation(ryzen, tmp_path):
    (ryzen / "proc/cmdline").write_text("ro quiet\n")
    for f in (GIG_GLOBAL, "/sys/devices/system/node/node0/hugepages/hugepages-1048576kB/"
              "nr_hugepages"):
        (ryzen / f.lstrip("/")).write_text("0\n")
    prof = load_profile(str(write_profile(tmp_path, AUTO)))
    h = Fragmented(ryzen, cap=1)
    row = _gig_row(engine.audit(h, prof))
    assert row.status == Status.DRIFT and "reserve: auto" in row.note  # runtime first
    plan = engine.plan(h, prof)
    (ch,) = [c for c in plan.changes if c.id == "hugepages/1G"]
    assert ch.params["fallback"] == "boot"
    assert "hugepages=4" not in " ".join(c.value or "" for c in plan.changes)  # not yet

    rep = engine.apply(h, prof)
    assert rep.ok, rep.error
    ids = [s.change.id for s in rep.steps]
    # the drop-in comes from the second plan, after the pool fell short
    assert ids == ["hugepages/1G", "kernel_cmdline//etc/default/grub.d/90-hosttune.cfg"]
    assert nr(ryzen, 0, 1048576) == 1  # kept what the kernel gave
    drop_in = (ryzen / "etc/default/grub.d/90-hosttune.cfg").read_text()
    assert "hugepagesz=1G hugepages=4" in drop_in
    assert "reboot" in rep.needs
    audit = engine.audit(h, prof)
    row = _gig_row(audit)
    assert row.key == "1G total (boot)" and row.status == Status.NEEDS_REBOOT
    assert row.note.startswith("boot reservation pending reboot")
    assert "allocated 1 of 4 pages at runtime" in row.note
    assert not audit.drift
    assert not engine.plan(h, prof).changes  # idempotent: the fallback is remembered

    # booted with the drop-in: the kernel reserved the pool
    (ryzen / "proc/cmdline").write_text("ro quiet hugepagesz=1G hugepages=4\n")
    (ryzen / GIG_GLOBAL.lstrip("/")).write_text("4\n")
    row = _gig_row(engine.audit(h, prof))
    assert row.status == Status.OK and row.note.startswith("boot reservation active")

    # rollback: drop-in gone, the pool as before, the fallback forgotten (runtime again)
    (ryzen / "proc/cmdline").write_text("ro quiet\n")
    assert engine.rollback(h).ok
    assert not (ryzen / "etc/default/grub.d/90-hosttune.cfg").exists()
    assert nr(ryzen, 0, 1048576) == 0
    row = _gig_row(engine.audit(h, prof))
    assert row.key == "1G node0" and row.status == Status.DRIFT


def test_auto_1g_pool_allocated_at_runtime_stays_runtime(ryzen, tmp_path):
    (ryzen / "proc/cmdline").write_text("ro quiet\n")
    prof = load_profile(str(write_profile(tmp_path, AUTO)))
    h = Fragmented(ryzen, cap=64)
    rep = engine.apply(h, prof)
    assert rep.ok, rep.error
    assert nr(ryzen, 0, 1048576) == 4
    assert "hugepages=4" not in (ryzen / "etc/default/grub.d/90-hosttune.cfg").read_text() \
        if (ryzen / "etc/default/grub.d/90-hosttune.cfg").exists() else True
    assert _gig_row(engine.audit(h, prof)).status == Status.OK


def test_auto_without_kernel_cmdline_fails_as_runtime(ryzen, tmp_path):
    prof = load_profile(str(write_profile(tmp_path, AUTO.replace("kernel_cmdline: {}\n", ""))))
    h = Fragmented(ryzen, cap=1)
    rep = engine.apply(h, prof)
    assert not rep.ok and "asked 4, got 1" in rep.error
    assert nr(ryzen, 0, 1048576) == 0
