"""Real-kernel tests (root): a huge-page pool up and back down through the tunable and the
engine on the live host, and a hugetlbfs mount made by the tunable inside a private mount
namespace (`unshare -m`), so the host's mount table is never touched. Pools stay small (tens
of MB); every test restores the pool it found, even when it fails. Only runtime changes are
applied (runtime_only + only=...), so nothing under the real /etc is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hosttune import engine
from hosttune.host import Host
from hosttune.profile import load_profile
from hosttune.tunables._systemd import mount_unit_name
from hosttune.tunables.hugepages import NODE_DIR, node_file
from tests.conftest import REPO, need

MiB2 = 2 * 1024**2


def _nodes() -> list[int]:
    return sorted(int(d[4:]) for d in os.listdir(NODE_DIR)
                  if d.startswith("node") and d[4:].isdigit()
                  and os.path.exists(node_file(int(d[4:]), MiB2)))


def _read_pool() -> dict[int, int]:
    return {n: int(Path(node_file(n, MiB2)).read_text()) for n in _nodes()}


def _restore_pool(orig: dict[int, int]) -> None:
    for n, v in orig.items():
        Path(node_file(n, MiB2)).write_text(f"{v}\n")


@pytest.fixture
def live_pool(kernel_lock) -> Iterator[dict[int, int]]:
    need(os.geteuid() == 0, "needs root (writes the live huge-page pool)")
    need(os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"), "no 2M huge pages")
    need(bool(_nodes()), "no per-node huge-page files")
    orig = _read_pool()
    try:
        yield orig
    finally:
        _restore_pool(orig)
        assert _read_pool() == orig


def _profile(tmp: Path, pages_per_node: dict[int, int], extra: str = "") -> Path:
    nodes = ", ".join(f"{n}: {p}" for n, p in pages_per_node.items())
    p = tmp / "live.yaml"
    p.write_text(f"name: live\nhugepages:\n  pools:\n    - pagesize: 2M\n      size: auto\n"
                 f"      nodes: {{{nodes}}}\n  min_free_ram: 1GiB\n  thp: null\n" + extra)
    return p


def test_live_pool_up_verify_and_back_down(live_pool, tmp_path):
    want = {n: v + 32 for n, v in live_pool.items()}  # +64 MiB per node
    host = Host("/", state_dir=str(tmp_path / "state"))
    loaded = load_profile(str(_profile(tmp_path, want)))
    rep = engine.apply(host, loaded, runtime_only=True, only={"hugepages"})
    assert rep.ok, rep.error
    assert [s.change.id for s in rep.steps] == ["hugepages/2M"]
    assert _read_pool() == want
    assert not engine.audit(host, loaded, only={"hugepages"}).drift
    again = engine.apply(Host("/", state_dir=str(tmp_path / "state")), loaded,
                         runtime_only=True, only={"hugepages"})
    assert again.steps == []
    rb = engine.rollback(Host("/", state_dir=str(tmp_path / "state")))
    assert rb.ok, [s.to_json() for s in rb.steps]
    assert _read_pool() == live_pool


def test_live_thp_mode_and_back(live_pool, tmp_path):
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    need(path.exists(), "no transparent huge pages")
    orig = path.read_text()
    sel = orig.split("[", 1)[1].split("]", 1)[0]
    other = "never" if sel != "never" else "madvise"
    p = tmp_path / "thp.yaml"
    p.write_text(f"name: thp\nhugepages:\n  pools: []\n  thp: {other}\n")
    host = Host("/", state_dir=str(tmp_path / "state"))
    try:
        rep = engine.apply(host, load_profile(str(p)), runtime_only=True, only={"hugepages"})
        assert rep.ok, rep.error
        assert f"[{other}]" in path.read_text()
        assert engine.rollback(Host("/", state_dir=str(tmp_path / "state"))).ok
        assert path.read_text() == orig
    finally:
        path.write_text(sel)


SNIPPET = textwrap.dedent("""
    import json, mmap, os, sys
    from hosttune import engine
    from hosttune.host import Host
    from hosttune.host.parsers import parse_mountinfo
    from hosttune.profile import load_profile

    prof, state, mnt = sys.argv[1:4]
    out = {}
    def mounted():
        return [m for m in parse_mountinfo(open("/proc/self/mountinfo").read())
                if m.mount_point == mnt]
    host = Host("/", state_dir=state)
    loaded = load_profile(prof)
    rep = engine.apply(host, loaded, runtime_only=True, only={"hugepages", "hugetlbfs"})
    out["ok"] = rep.ok
    out["error"] = rep.error
    out["steps"] = [s.change.id for s in rep.steps]
    out["ran"] = [list(a) for a in host.runner.ran]
    ms = mounted()
    out["mount"] = [[m.fstype, m.options] for m in ms]
    out["audit_drift"] = [r.key for r in engine.audit(Host("/", state_dir=state), loaded,
                          only={"hugepages", "hugetlbfs"}).drift]
    # a model-like file: ftruncate to a huge-page multiple, fill through MAP_SHARED, read back
    f = os.path.join(mnt, "model.bin")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            os.write(fd, b"x")
            out["write"] = "ok"
        except OSError as err:
            out["write"] = err.errno
        os.ftruncate(fd, 2 * 1024 * 1024)
        with mmap.mmap(fd, 2 * 1024 * 1024, mmap.MAP_SHARED) as m:
            m[:5] = b"GGUF!"
        with mmap.mmap(fd, 2 * 1024 * 1024, mmap.MAP_SHARED, mmap.PROT_READ) as m:
            out["mmap_read"] = m[:5].decode()
        out["pread"] = os.pread(fd, 5, 0).decode()
        # the file holds one page: the audit names it, a plan never shrinks below it, and a
        # shrink forced anyway is "accepted" by the kernel but caught by the read-back
        from hosttune.errors import ApplyError
        from hosttune.tunables.base import Context
        from hosttune.tunables.hugepages import HugePagesTunable, allocate
        ev = HugePagesTunable().evaluate(Context(Host("/", state_dir=state), loaded))
        out["notes"] = [r.note for r in ev.rows if r.key.startswith("2M node")]
        node = sys.argv[4]
        base = f"/sys/devices/system/node/node{node}/hugepages/hugepages-2048kB/"
        try:
            allocate(Host("/", state_dir=state), 2 * 1024 * 1024, {node: 0}, 2)
            out["shrink"] = "no error"
        except ApplyError as err:
            out["shrink"] = str(err)
        out["after_shrink"] = [int(open(base + f).read()) for f in
                               ("nr_hugepages", "surplus_hugepages")]
    finally:
        os.close(fd)
        os.unlink(f)
    rb = engine.rollback(Host("/", state_dir=state))
    out["rollback_ok"] = rb.ok
    out["after_rollback"] = len(mounted())
    out["dir_left"] = os.path.exists(mnt)
    print(json.dumps(out))
""")


def test_hugetlbfs_mount_in_private_namespace(live_pool, tmp_path):
    unshare = shutil.which("unshare")
    need(unshare is not None, "unshare (util-linux) is not installed")
    assert unshare is not None
    need("hugetlbfs" in Path("/proc/filesystems").read_text(), "kernel without hugetlbfs")
    mnt = tmp_path / "ns" / "models"
    first = min(live_pool)
    want = dict(live_pool)
    want[first] += 16  # 32 MiB
    prof = _profile(tmp_path, want, extra=(
        "hugetlbfs:\n  mounts:\n"
        f"    - {{path: {mnt}, pagesize: 2M, size: 16MiB, mode: '0700', persist: unit}}\n"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [unshare, "-m", "--propagation", "private", sys.executable, "-c", SNIPPET, str(prof),
         str(tmp_path / "state"), str(mnt), str(first)],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # runtime_only applies no file, so the engine's verify still sees the mount unit missing
    # (persistent rows): that, and only that, may drift
    persistent = {f"{mnt} unit {mount_unit_name(str(mnt))}",
                  f"{mnt} unit enabled (local-fs.target)"}
    assert out["ok"] or set(out["audit_drift"]) == persistent, out
    assert set(out["audit_drift"]) <= persistent, out
    assert out["steps"] == ["hugepages/2M", f"hugetlbfs/mount {mnt}"]
    assert ["mount", "-t", "hugetlbfs", "-o",
            "pagesize=2M,size=16777216,mode=0700,uid=0,gid=0", "hugetlbfs", str(mnt)] \
        in out["ran"]
    ((fstype, opts),) = out["mount"]
    assert fstype == "hugetlbfs"
    assert opts["pagesize"] == "2M" and opts["size"] == "16777216" and opts["mode"] == "700"
    assert out["write"] == 22  # EINVAL: hugetlbfs has no write(2)
    assert out["mmap_read"] == "GGUF!" and out["pread"] == "GGUF!"
    assert any(f"held by hugetlbfs files: {mnt} 1 pages" in n for n in out["notes"]), out
    assert "pages in use cannot be freed" in out["shrink"]
    assert f"node{first}: asked 0, got " in out["shrink"]
    nr_after, surplus_after = out["after_shrink"]
    assert nr_after >= 1 and surplus_after >= 1  # the kernel kept the in-use page as surplus
    assert out["rollback_ok"] and out["after_rollback"] == 0 and not out["dir_left"]
    # the host's own mount table never saw it
    assert str(mnt) not in Path("/proc/self/mountinfo").read_text()
    assert _read_pool() == live_pool


HVO_PATH = Path("/proc/sys/vm/hugetlb_optimize_vmemmap")


def test_live_hvo_audited_applied_and_back(live_pool, tmp_path):
    """HVO on this kernel: the sysctl where CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP is built in
    (else audit says unsupported); flipped through the engine, shown by status and the
    exporter, rolled back."""
    from hosttune.monitor.exporter import families
    from hosttune.monitor.snapshot import HugePagesCollector
    from hosttune.tunables.hugepages import hvo_state, kernel_config, vmemmap_saved_per_page

    host = Host("/")
    cfg = kernel_config(host)
    st = hvo_state(host)
    if cfg is not None and cfg.get("CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP") != "y":
        assert st.mode in ("unsupported", "boot")
    need(HVO_PATH.exists(), "kernel without vm.hugetlb_optimize_vmemmap")
    assert st.mode == "sysctl"
    orig = HVO_PATH.read_text().strip()
    want = "off" if orig == "1" else "on"
    p = tmp_path / "hvo.yaml"
    p.write_text(f"name: hvo\nhugepages:\n  pools: []\n  thp: null\n"
                 f"  optimize_vmemmap: {'true' if want == 'on' else 'false'}\n")
    state = str(tmp_path / "state")
    try:
        loaded = load_profile(str(p))
        rep = engine.audit(Host("/", state_dir=state), loaded, only={"hugepages"})
        (row,) = [r for r in rep.rows if r.key == "vm.hugetlb_optimize_vmemmap"]
        assert row.current == ("on" if orig == "1" else "off") and row.desired == want
        ap = engine.apply(Host("/", state_dir=state), loaded, runtime_only=True,
                          only={"hugepages"})
        assert ap.ok, ap.error
        assert HVO_PATH.read_text().strip() == ("1" if want == "on" else "0")
        # pages allocated now carry (or not) the optimization; status/exporter report it
        node = next(iter(live_pool))
        Path(node_file(node, MiB2)).write_text(f"{live_pool[node] + 8}\n")
        snap = HugePagesCollector().read(host)
        assert snap.hvo == want
        total = sum(p.total for p in snap.pools if p.node is None and p.page_size_bytes == MiB2)
        gig = sum(p.total for p in snap.pools if p.node is None and p.page_size_bytes == 1 << 30)
        expect = (total * vmemmap_saved_per_page(MiB2) + gig * vmemmap_saved_per_page(1 << 30)
                  if want == "on" else 0)
        assert snap.vmemmap_saved_bytes == expect
        from types import SimpleNamespace

        fams = families(SimpleNamespace(**{k: None for k in (
            "cpu", "memory", "memlocked", "store", "containers", "gpu", "audit", "errors")},
            hugepages=snap))
        (fam,) = [f for f in fams if f.name == "hosttune_hugetlb_vmemmap_saved_bytes"]
        assert fam.samples[0].value == expect and fam.documentation
        _restore_pool(live_pool)
        assert engine.rollback(Host("/", state_dir=state)).ok
        assert HVO_PATH.read_text().strip() == orig
    finally:
        HVO_PATH.write_text(orig + "\n")


def test_live_hvo_saving_measured_matches_computed(live_pool):
    """The struct-page memory HVO frees, read from the kernel's own memmap counter
    (/proc/vmstat nr_memmap_pages) around a 256-page (512 MiB) 2M pool with HVO off and on,
    against what hosttune computes (vmemmap_saved_per_page): within 10%."""
    from hosttune.bench.hvo import measure, memmap_pages
    from hosttune.tunables.hugepages import hvo_state

    host = Host("/")
    st = hvo_state(host)
    if st.mode != "sysctl":
        # no sysctl: nothing to flip at runtime; audit must say why (tested on trees too)
        assert st.mode in ("unsupported", "boot", "unknown") and st.note
        need(False, f"HVO not switchable at runtime here: {st.note}")
    need(memmap_pages(host) is not None, "no nr_memmap_pages in /proc/vmstat (Linux 6.11+)")
    orig_hvo = HVO_PATH.read_text()
    m = measure(host, pages=256, rounds=2)
    assert HVO_PATH.read_text() == orig_hvo  # restored
    need(all(r.allocated == 256 for r in m.rounds), "the kernel could not allocate 512 MiB "
         f"of 2M pages now: {[r.allocated for r in m.rounds]}")
    assert m.computed_bytes == 256 * 7 * 4096  # 7 of the 8 vmemmap pages of each 2M page
    assert abs(m.measured_bytes - m.computed_bytes) <= 0.1 * m.computed_bytes, m
    # with HVO off, shrinking restores nothing
    assert all(r.shrink_restored_bytes == 0 for r in m.rounds if not r.hvo), m
