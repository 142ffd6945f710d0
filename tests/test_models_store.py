"""Model store on a real hugetlbfs (root, CI-mandatory): load -> list -> verify -> unload of a
real GGUF, and every failure case leaves no file and every huge-page counter where it was."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from hosttune.host import Host
from hosttune.models import kernel, store
from hosttune.models.trailer import TRAILER_LEN, stored_size
from tests.conftest import need, run_cli
from tests.models_helpers import (
    POOL_PAGES,
    counters,
    mount_hugetlbfs,
    py,
    read_int,
    umount,
    write_int,
)

MiB = 1 << 20


def write_gguf(path, n_tensors: int = 3, elems: int = 400_000) -> dict[str, np.ndarray]:
    import gguf

    rng = np.random.default_rng(4)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(n_tensors)
    w.add_name("hosttune-test")
    tensors = {}
    for i in range(n_tensors):
        t = rng.standard_normal(elems).astype(np.float32)
        tensors[f"blk.{i}.weight"] = t
        w.add_tensor(f"blk.{i}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def mount_of(hs) -> store.StoreMount:
    return store.resolve_mount(Host("/"), None, str(hs.mount))


def userfaultfd_here() -> bool:
    """Whether this kernel lets us fill a shared hugetlbfs mapping with UFFDIO_COPY (it
    does on the CI machine: Linux 6.18, root)."""
    import mmap

    m = mmap.mmap(-1, 2 * MiB)
    try:
        f = kernel.PageFiller.register(kernel.buffer_address(m), 2 * MiB)
    finally:
        m.close()
    if f is None:
        return False
    f.close()
    return True


@pytest.fixture(params=["userfaultfd", "preadv"])
def fill(request, monkeypatch) -> str:
    """Both ways a load fills the store's pages: UFFDIO_COPY from each thread's buffer, and
    preadv straight into the mapping where userfaultfd is unavailable (here: an architecture
    without it, as a seccomp filter or an older kernel would leave it)."""
    if request.param == "userfaultfd":
        need(userfaultfd_here(), "userfaultfd(2) is unavailable on this kernel")
    else:
        monkeypatch.setattr(kernel, "_SYS_USERFAULTFD", {})
    return request.param


def test_gguf_load_list_verify_unload(hugestore, tmp_path, shim_so):
    src = tmp_path / "tiny.gguf"
    tensors = write_gguf(src)
    size = src.stat().st_size
    assert size > 2 * MiB  # spans several huge pages

    r = run_cli("models", "load", str(src), "--mount", str(hugestore.mount), "--json")
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)["model"]
    assert loaded["true_size_bytes"] == size
    assert loaded["stored_size_bytes"] == stored_size(size, 2 * MiB)
    pages = loaded["pages"]
    assert counters()["HugePages_Free"] == hugestore.baseline["HugePages_Free"] - pages

    r = run_cli("models", "list", "--mount", str(hugestore.mount), "--json")
    assert r.returncode == 0, r.stderr
    (item,) = json.loads(r.stdout)["models"]
    assert item["name"] == "tiny.gguf" and item["valid"] and item["true_size_bytes"] == size
    assert sum(item["pages_per_node"].values()) == pages
    r = run_cli("models", "list", "--mount", str(hugestore.mount))
    assert "tiny.gguf" in r.stdout and "N0=" in r.stdout

    stored = hugestore.mount / "tiny.gguf"
    with open(stored, "rb") as fh:
        assert fh.read(size) == src.read_bytes()

    # gguf's own reader straight from the store, no shim: np.memmap sizes the map from the
    # padded file size, and GGUF locates tensors by offset, so the padding is never read.
    import gguf

    rd = gguf.GGUFReader(str(stored))
    got = {t.name: np.array(t.data) for t in rd.tensors}
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert np.array_equal(got[k], v)
    del rd, got
    # ... and under the shim as well (loaders run with it in containers).
    code = f"import gguf; r = gguf.GGUFReader({str(stored)!r}); print(len(r.tensors), r.data.size)"
    res = py(code, preload=shim_so)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["3", str(size)]  # the shim shows the true size

    r = run_cli("models", "verify", "--mount", str(hugestore.mount), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)[0]["checksum_checked"] is True

    r = run_cli("models", "unload", "tiny.gguf", "--mount", str(hugestore.mount))
    assert r.returncode == 0, r.stderr
    assert "back in the pool" in r.stdout
    hugestore.assert_clean()


def test_verify_detects_corruption(hugestore, tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(3 * MiB))
    assert run_cli("models", "load", str(src), "--mount", str(hugestore.mount)).returncode == 0
    import mmap

    fd = os.open(hugestore.mount / "m.bin", os.O_RDWR)
    try:  # hugetlbfs has no write(2): change a byte through a shared mapping
        m = mmap.mmap(fd, 4 * MiB)
        m[100] ^= 0xFF
        m.close()
    finally:
        os.close(fd)
    r = run_cli("models", "verify", "m.bin", "--mount", str(hugestore.mount))
    assert r.returncode == 1
    assert "checksum mismatch" in r.stdout
    assert run_cli("models", "unload", "m.bin", "--mount", str(hugestore.mount)).returncode == 0
    hugestore.assert_clean()


def test_exact_multiple_gets_one_more_page(hugestore, tmp_path, fill):
    src = tmp_path / "exact.bin"
    src.write_bytes(os.urandom(4 * MiB))
    res = store.load_model(Host("/"), str(src), mount_of(hugestore), checksum=False)
    assert res.model.stored_size == 6 * MiB and res.model.pages == 3 and res.fill == fill
    with open(hugestore.mount / "exact.bin", "rb") as fh:
        assert fh.read(4 * MiB) == src.read_bytes()
        assert fh.read(2 * MiB - TRAILER_LEN) == bytes(2 * MiB - TRAILER_LEN)
    (m,) = store.list_models(Host("/"), [mount_of(hugestore)])
    assert m.true_size == 4 * MiB and m.trailer is not None
    store.unload_model(Host("/"), m)
    hugestore.assert_clean()


def test_node_placement(hugestore, tmp_path, fill):
    src = tmp_path / "n.bin"
    src.write_bytes(os.urandom(5 * MiB))
    h = Host("/")
    res = store.load_model(h, str(src), mount_of(hugestore), node=0)
    assert res.model.pages_per_node == {0: 3} and res.fill == fill
    with open(hugestore.mount / "n.bin", "rb") as fh:
        assert fh.read(5 * MiB) == src.read_bytes()
    assert counters()["node0/free_hugepages"] == hugestore.baseline["node0/free_hugepages"] - 3
    store.unload_model(h, res.model)
    hugestore.assert_clean()
    # a node without memory / that does not exist: refused up front
    with pytest.raises(store.ModelStoreError, match="node 7"):
        store.load_model(h, str(src), mount_of(hugestore), node=7)
    hugestore.assert_clean()


def test_declared_model_brings_mount_and_node(hugestore, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: t\nmodels:\n  declared:\n    - name: decl.bin\n"
                    f"      mount: {hugestore.mount}\n      node: 0\n")
    src = tmp_path / "whatever.bin"
    src.write_bytes(os.urandom(MiB))
    r = run_cli("models", "load", str(src), "--name", "decl.bin", "--profile", str(prof),
                "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["model"]
    assert out["mount"] == str(hugestore.mount) and out["pages_per_node"] == {"0": 1}
    r = run_cli("models", "pool", "--profile", str(prof), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (n,) = json.loads(r.stdout)
    assert n["mounts"][str(hugestore.mount)]["needed_bytes"] == 2 * MiB  # stored, not planned
    assert n["planned_pages"] == 0
    assert run_cli("models", "unload", "decl.bin", "--mount", str(hugestore.mount)).returncode \
        == 0
    hugestore.assert_clean()


# --- failure cases: clear message, no partial file, pages back in the pool -------------------
def test_not_enough_pages(hugestore, tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:  # sparse: bigger than the pool, cheap to make
        fh.truncate((POOL_PAGES + 40) * 2 * MiB)
    with pytest.raises(store.ModelStoreError) as exc:
        store.load_model(Host("/"), str(src), mount_of(hugestore))
    err = str(exc.value)
    assert "not enough free 2M huge pages" in err
    assert f"needs {POOL_PAGES + 41}" in err and f"{hugestore.baseline['2M/free_hugepages']} free" \
        in err
    assert "sysctl vm.nr_hugepages=" in err and "hosttune apply" in err
    hugestore.assert_clean()


def test_mount_too_small(hugestore, small_mount, tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(5 * MiB))
    before = counters()
    h = Host("/")
    with pytest.raises(store.ModelStoreError, match="too small"):
        store.load_model(h, str(src), store.resolve_mount(h, None, str(small_mount)))
    assert os.listdir(small_mount) == []
    assert counters() == before


def test_not_hugetlbfs(hugestore, tmp_path):
    h = Host("/")
    with pytest.raises(store.ModelStoreError, match="not hugetlbfs"):
        store.resolve_mount(h, None, str(tmp_path))
    with pytest.raises(store.ModelStoreError, match="does not exist"):
        store.resolve_mount(h, None, str(tmp_path / "nope"))
    hugestore.assert_clean()


def test_unreadable_source(hugestore, tmp_path):
    for bad, why in ((tmp_path / "missing.gguf", "No such file"), (tmp_path, "not a regular")):
        with pytest.raises(store.ModelStoreError) as exc:
            store.load_model(Host("/"), str(bad), mount_of(hugestore), name="x.gguf")
        assert "cannot read the source" in str(exc.value) and why in str(exc.value)
    hugestore.assert_clean()


def test_name_taken(hugestore, tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(3 * MiB))
    h = Host("/")
    store.load_model(h, str(src), mount_of(hugestore))
    after_first = counters()
    with pytest.raises(store.ModelStoreError, match="name taken"):
        store.load_model(h, str(src), mount_of(hugestore))
    assert counters() == after_first
    assert sorted(os.listdir(hugestore.mount)) == ["m.bin"]
    # replace=True swaps atomically and frees the old pages
    src.write_bytes(os.urandom(3 * MiB))
    res = store.load_model(h, str(src), mount_of(hugestore), replace=True)
    assert res.replaced is True
    assert counters() == after_first
    with open(hugestore.mount / "m.bin", "rb") as fh:
        assert fh.read(3 * MiB) == src.read_bytes()
    store.unload_model(h, res.model)
    hugestore.assert_clean()


def test_load_errors_cli(hugestore, tmp_path):
    """`models load` turns a refused load into one error line and exit 2."""
    src = tmp_path / "m.bin"
    src.write_bytes(b"x" * 1000)
    r = run_cli("models", "load", str(src), "--mount", str(tmp_path))
    assert r.returncode == 2 and "not hugetlbfs" in r.stderr
    r = run_cli("models", "load", str(tmp_path / "missing.gguf"), "--mount",
                str(hugestore.mount))
    assert r.returncode == 2 and "cannot read the source" in r.stderr
    hugestore.assert_clean()


@pytest.mark.parametrize("how", ["append", "touch", "truncate"])
def test_source_changes_during_copy(hugestore, tmp_path, how):
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(40 * MiB))

    def progress(p: store.LoadProgress) -> None:
        if p.done == 0:  # the copy is about to start: the writer is still busy
            if how == "append":
                with open(src, "ab") as fh:
                    fh.write(b"more")
            elif how == "touch":
                os.utime(src, ns=(1, 1))
            else:
                os.truncate(src, 10 * MiB)

    with pytest.raises(store.ModelStoreError, match="source .* (changed|shrank)"):
        store.load_model(Host("/"), str(src), mount_of(hugestore), progress=progress)
    hugestore.assert_clean()


@pytest.fixture
def sigint_default():
    """Python raises KeyboardInterrupt on SIGINT only if it did not inherit SIGINT ignored, and
    a shell starts background jobs with SIGINT ignored (POSIX): these tests must not depend on
    how the suite was launched."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_keyboard_interrupt(hugestore, tmp_path, sigint_default):
    """A real SIGINT (what Ctrl-C sends) in the middle of the copy."""
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(40 * MiB))

    def progress(p: store.LoadProgress) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(store.LoadInterrupted, match="interrupted"):
        store.load_model(Host("/"), str(src), mount_of(hugestore), progress=progress,
                         threads=1)
    hugestore.assert_clean()


def test_keyboard_interrupt_cli(hugestore, tmp_path):
    """The CLI process gets SIGINT during the copy: message, exit 2, nothing left."""
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(40 * MiB))
    # Deliver the signal from the progress callback the CLI passes (the copy is running).
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # see sigint_default\n"
        "from hosttune.models import store\n"
        "real = store.load_model\n"
        "def load(*a, progress=None, **k):\n"
        "    def p(report):\n"
        "        progress(report)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(*a, progress=p, **k)\n"
        "store.load_model = load\n"
        "from hosttune.cli import main\n"
        f"sys.argv = ['hosttune', 'models', 'load', {str(src)!r}, '--mount', "
        f"{str(hugestore.mount)!r}]\n"
        "main()\n")
    r = py(code)
    assert r.returncode == 2, r.stderr
    assert "interrupted" in r.stderr and "was not stored" in r.stderr
    hugestore.assert_clean()


def test_fused_checksum_is_the_tree_checksum(hugestore, tmp_path, fill):
    """The checksum computed piece by piece during the copy is the reference tree checksum
    (what the two-pass copy of earlier versions recorded), with leaves and pieces cut short;
    the stored bytes are the source's, then zeros up to the trailer."""
    from hosttune.models.checksum import LEAF_LOG2, checksum_bytes

    data = os.urandom(40 * MiB + 12345)
    src = tmp_path / "m.bin"
    src.write_bytes(data)
    for threads in (1, 2):
        res = store.load_model(Host("/"), str(src), mount_of(hugestore), threads=threads,
                               replace=True)
        assert res.fill == fill
        tr = res.model.trailer
        assert tr is not None and tr.leaf_log2 == LEAF_LOG2
        assert tr.checksum == checksum_bytes(data)
        assert store.verify_model(Host("/"), res.model).ok
        with open(hugestore.mount / "m.bin", "rb") as fh:
            assert fh.read(len(data)) == data
            pad = res.model.stored_size - len(data) - TRAILER_LEN
            assert fh.read(pad) == bytes(pad)
    store.unload_model(Host("/"), res.model)
    hugestore.assert_clean()


def test_verify_finds_a_changed_byte_anywhere(hugestore, tmp_path, fill):
    """Piece and leaf edges, the last data byte, the padding and the trailer, on hugetlbfs."""
    import mmap

    from hosttune.models.checksum import LEAF_LOG2, PIECE

    leaf = 1 << LEAF_LOG2
    size = leaf + 3 * PIECE + 777
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(size))
    h = Host("/")
    model = store.load_model(h, str(src), mount_of(hugestore)).model
    positions = [0, PIECE - 1, PIECE, leaf - 1, leaf, leaf + PIECE, size - 1, size,
                 model.stored_size - TRAILER_LEN - 1, model.stored_size - TRAILER_LEN,
                 model.stored_size - 1]
    fd = os.open(hugestore.mount / "m.bin", os.O_RDWR)
    m = mmap.mmap(fd, model.stored_size)  # hugetlbfs has no write(2)
    try:
        for pos in positions:
            m[pos] ^= 0x10
            r = store.verify_model(h, store.find_model(h, [mount_of(hugestore)], "m.bin"))
            assert not r.ok, pos
            m[pos] ^= 0x10
        assert store.verify_model(h, model).ok
    finally:
        m.close()
        os.close(fd)
    r = run_cli("models", "verify", "m.bin", "--mount", str(hugestore.mount))
    assert r.returncode == 0 and "checksum ok" in r.stdout, r.stdout + r.stderr
    store.unload_model(h, model)
    hugestore.assert_clean()


def test_progress_rate_never_exceeds_bytes_over_elapsed(hugestore, tmp_path):
    """Every report's rate is bytes copied over the wall time since the copy began, checked
    against our own clock: the copy began after load_model was called and before the first
    report (done=0), and each report's byte count was read after the previous report
    returned. So elapsed_s lies between those two clocks, and the rate is at most the bytes
    over the time since the first report - a per-tick delta rate breaks these bounds."""
    import time

    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(120 * MiB))
    seen: list[tuple[store.LoadProgress, float, float]] = []  # report, since call, since 1st
    t0 = time.monotonic()
    first: list[float] = []
    prev_return = [0.0]

    def progress(p: store.LoadProgress) -> None:
        now = time.monotonic()
        if not first:
            first.append(now)
        seen.append((p, now - t0, prev_return[0] - first[0]))
        prev_return[0] = time.monotonic()

    res = store.load_model(Host("/"), str(src), mount_of(hugestore), progress=progress,
                           threads=1)
    assert len(seen) >= 3
    assert seen[0][0].done == 0 and seen[0][0].rate_bytes_per_s == 0
    for p, since_call, since_first in seen[1:]:
        assert p.done <= p.total == 120 * MiB
        assert since_first <= p.elapsed_s <= since_call
        assert p.rate_bytes_per_s == p.done / p.elapsed_s
        if since_first > 0:
            assert p.rate_bytes_per_s <= p.done / since_first
    assert [p.done for p, _, _ in seen] == sorted(p.done for p, _, _ in seen)
    assert seen[-1][0].done == 120 * MiB and seen[-1][0].elapsed_s == res.copy_seconds
    store.unload_model(Host("/"), res.model)
    hugestore.assert_clean()


# --- 1 GiB pages ------------------------------------------------------------------------------
GIG = "/sys/kernel/mm/hugepages/hugepages-1048576kB"


@pytest.fixture
def gigstore(kernel_lock, tmp_path):
    """A hugetlbfs mount with pagesize=1G over one 1 GiB page allocated at runtime (restored
    afterwards). Skips (fails in CI) where the kernel cannot allocate one now: a guest booted
    with hugepagesz=1G hugepages=1 on its command line can host the test."""
    import time

    from tests.conftest import need

    need(os.geteuid() == 0 and os.path.isdir(GIG), "needs root and 1 GiB huge pages")
    orig = read_int(f"{GIG}/nr_hugepages")
    mnt = tmp_path / "gig"
    mnt.mkdir()
    mounted = False
    try:
        if read_int(f"{GIG}/free_hugepages") - read_int(f"{GIG}/resv_hugepages") < 1:
            write_int(f"{GIG}/nr_hugepages", orig + 1)
            time.sleep(0.1)
        need(read_int(f"{GIG}/free_hugepages") - read_int(f"{GIG}/resv_hugepages") >= 1,
             "the kernel could not allocate a 1 GiB page at runtime (no contiguous GiB free)")
        mount_hugetlbfs(mnt, "1G", pagesize="1G")
        mounted = True
        yield mnt
    finally:
        if mounted:
            umount(mnt)
        write_int(f"{GIG}/nr_hugepages", orig)


def test_1g_page_store(gigstore, tmp_path, shim_so):
    """load, list, verify, the shim and unload on a pagesize=1G mount."""
    src = tmp_path / "m.gguf"
    data = b"GGUF" + os.urandom(5 * MiB + 3)
    src.write_bytes(data)
    free0 = int(open(f"{GIG}/free_hugepages").read())
    r = run_cli("models", "load", str(src), "--mount", str(gigstore), "--json")
    assert r.returncode == 0, r.stderr
    md = json.loads(r.stdout)["model"]
    assert (md["page_size_bytes"], md["pages"], md["stored_size_bytes"]) == (1 << 30, 1, 1 << 30)
    assert int(open(f"{GIG}/free_hugepages").read()) == free0 - 1
    r = run_cli("models", "list", "--mount", str(gigstore), "--json")
    (item,) = json.loads(r.stdout)["models"]
    assert item["valid"] and item["true_size_bytes"] == len(data)
    assert sum(item["pages_per_node"].values()) == 1
    r = run_cli("models", "verify", "--mount", str(gigstore))
    assert r.returncode == 0 and "checksum ok" in r.stdout, r.stdout + r.stderr
    stored = gigstore / "m.gguf"
    res = py(f"import os; print(os.stat({str(stored)!r}).st_size)", preload=shim_so)
    assert res.returncode == 0 and res.stdout.split() == [str(len(data))], res.stderr
    with open(stored, "rb") as fh:
        assert fh.read(len(data)) == data
    r = run_cli("models", "unload", "m.gguf", "--mount", str(gigstore))
    assert r.returncode == 0 and "back in the pool" in r.stdout, r.stderr
    assert int(open(f"{GIG}/free_hugepages").read()) == free0
    assert os.listdir(gigstore) == []


def test_registered_range_never_hangs_a_stray_touch(hugestore):
    """While a store file's range is registered for UFFDIO_COPY, a touch of a page not filled
    yet is SIGBUS (UFFD_FEATURE_SIGBUS), not a fault waiting forever for a handler that does
    not exist; a filled page reads back; after close() the mapping behaves as usual."""
    need(userfaultfd_here(), "userfaultfd(2) is unavailable on this kernel")
    path = hugestore.mount / "stray"
    code = f"""
import mmap, os
from hosttune.models import kernel
fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4 << 20)
m = mmap.mmap(fd, 4 << 20, flags=mmap.MAP_SHARED)
buf = mmap.mmap(-1, 2 << 20)
buf[:5] = b"hello"
f = kernel.PageFiller.register(kernel.buffer_address(m), 4 << 20)
assert f is not None
f.copy(kernel.buffer_address(m), kernel.buffer_address(buf), 2 << 20)
assert m[:5] == b"hello" and m[(2 << 20) - 1] == 0
if MODE == "close":
    f.close()
    assert m[(2 << 20) + 1] == 0
    print("ok")
else:
    print("touching", flush=True)
    m[(2 << 20) + 1]
"""
    try:
        r = py('MODE = "touch"\n' + code, timeout=60)
        assert r.returncode == -signal.SIGBUS and r.stdout == "touching\n", r.stderr
        os.unlink(path)
        r = py('MODE = "close"\n' + code, timeout=60)
        assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    finally:
        if path.exists():
            os.unlink(path)
    hugestore.assert_clean()


def test_filler_refused_range_falls_back(tmp_path):
    """A range the kernel will not register (here: nothing is mapped there) gives no filler,
    and its descriptor is closed: the load then copies with preadv."""
    need(userfaultfd_here(), "userfaultfd(2) is unavailable on this kernel")
    before = len(os.listdir("/proc/self/fd"))
    assert kernel.PageFiller.register(1 << 46, 2 * MiB) is None
    assert len(os.listdir("/proc/self/fd")) == before
