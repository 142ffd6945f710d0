"""Model store without the kernel: trailer format, checksum, parsers, --root behaviour,
pool planning on fake trees, the profile section."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hosttune.errors import ProfileError
from hosttune.host import Host
from hosttune.models import store
from hosttune.models.checksum import checksum_bytes
from hosttune.models.trailer import (
    ALGO_XXH3_TREE,
    TRAILER_LEN,
    Trailer,
    parse_trailer,
    stored_size,
)
from hosttune.profile import load_profile
from tests.conftest import run_cli

MiB = 1 << 20
HP = 2 * MiB


# --- trailer --------------------------------------------------------------------------------
@given(st.integers(min_value=1, max_value=1 << 40), st.sampled_from([HP, 1 << 30]))
def test_trailer_roundtrip(size, page):
    total = stored_size(size, page)
    assert total % page == 0 and total >= size + TRAILER_LEN and total - size - TRAILER_LEN < page
    tr = Trailer(size, page, ALGO_XXH3_TREE, 25, 0x1234, 99)
    raw = tr.pack()
    assert len(raw) == TRAILER_LEN
    assert parse_trailer(raw, file_size=total, page_size=page) == tr


def test_exact_multiple_costs_one_page():
    assert stored_size(4 * MiB, HP) == 6 * MiB
    assert stored_size(4 * MiB - 64, HP) == 4 * MiB
    assert stored_size(4 * MiB - 63, HP) == 6 * MiB


def test_trailer_rejects():
    tr = Trailer(10, HP)
    raw = tr.pack()
    assert parse_trailer(raw, file_size=HP, page_size=HP) == tr
    assert parse_trailer(raw, file_size=2 * HP, page_size=HP) is None  # size disagrees
    assert parse_trailer(raw, file_size=1 << 30, page_size=1 << 30) is None  # page disagrees
    bad = bytearray(raw)
    bad[20] ^= 1  # flipped bit in the true size: check value catches it
    assert parse_trailer(bytes(bad), file_size=HP, page_size=HP) is None
    assert parse_trailer(b"GGUF" + raw[4:], file_size=HP, page_size=HP) is None
    assert parse_trailer(raw[:-1], file_size=HP, page_size=HP) is None


def test_checksum_tree_matches_file_reader(tmp_path):
    data = os.urandom(3 * 4096 + 17)
    p = tmp_path / "d"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert store._checksum_file(fd, len(data), 12) == checksum_bytes(data, 12)
        changed = data[:-1] + bytes([data[-1] ^ 1])  # the last byte, always different
        assert store._checksum_file(fd, len(data), 12) != checksum_bytes(changed, 12)
    finally:
        os.close(fd)


def test_parse_numa_maps():
    text = (
        "7f0000000000 default file=/srv/m/a.gguf huge dirty=3 mapmax=2 N0=2 N1=1 "
        "kernelpagesize_kB=2048\n"
        "7f1000000000 default file=/srv/m/a.gguf.bak huge N0=7 kernelpagesize_kB=2048\n"
        "7f2000000000 default anon=3 dirty=3 N0=3 kernelpagesize_kB=4\n")
    assert store.parse_numa_maps(text, "/srv/m/a.gguf", HP) == {0: 2, 1: 1}
    assert store.parse_numa_maps(text, "/srv/m/none", HP) == {}


# --- --root (a tree): list / verify / pool work on files, load / unload refuse -------------------
def _store_file(path, data: bytes, *, checksum: bool = True) -> None:
    total = stored_size(len(data), HP)
    tr = Trailer(len(data), HP, ALGO_XXH3_TREE if checksum else 0, 25 if checksum else 0,
                 checksum_bytes(data) if checksum else 0, 1)
    path.write_bytes(data + bytes(total - len(data) - TRAILER_LEN) + tr.pack())


def _tree_store(root) -> tuple[Host, list[store.StoreMount]]:
    """The tree's /dev/hugepages as `models list|verify --root ROOT --mount /dev/hugepages`
    resolves it (the default profile, inference)."""
    h = Host(root)
    return h, [store.resolve_mount(h, load_profile("inference").profile, "/dev/hugepages")]


def test_root_list_and_verify(ryzen):
    d = ryzen / "dev/hugepages"
    d.mkdir(parents=True, exist_ok=True)
    _store_file(d / "good.gguf", b"GGUF" + os.urandom(3 * MiB))
    (d / "junk.bin").write_bytes(b"x" * 100)
    _store_file(d / ".x.gguf.hosttune-loading-42", b"partial")
    h, mounts = _tree_store(ryzen)
    by = {m.name: m for m in store.list_models(h, mounts)}
    assert by["good.gguf"].trailer is not None and by["good.gguf"].true_size == 3 * MiB + 4
    assert by["good.gguf"].pages == 2 and by["good.gguf"].pages_per_node is None
    assert by["junk.bin"].trailer is None
    assert by[".x.gguf.hosttune-loading-42"].partial
    good = store.verify_model(h, store.find_model(h, mounts, "good.gguf"))
    assert good.ok and good.checksum_checked, good.problems
    res = {r.model.name: r for r in (store.verify_model(h, m)
                                     for m in store.list_models(h, mounts, nodes=False))}
    assert res["good.gguf"].ok and not res["junk.bin"].ok
    assert "interrupted load" in res[".x.gguf.hosttune-loading-42"].problems[0]
    # corrupt one byte of the data: verify fails with a checksum mismatch
    raw = bytearray((d / "good.gguf").read_bytes())
    raw[10] ^= 0xFF
    (d / "good.gguf").write_bytes(bytes(raw))
    bad = store.verify_model(h, store.find_model(h, mounts, "good.gguf"))
    assert not bad.ok and any("checksum mismatch" in x for x in bad.problems)


def test_root_verify_cli_exit_codes(ryzen):
    """`models verify` prints "checksum ok" and exits 0 for a sound model, 1 when one fails."""
    d = ryzen / "dev/hugepages"
    d.mkdir(parents=True, exist_ok=True)
    _store_file(d / "good.gguf", b"GGUF" + os.urandom(3 * MiB))
    (d / "junk.bin").write_bytes(b"x" * 100)
    r = run_cli("models", "verify", "good.gguf", "--root", str(ryzen), "--mount",
                "/dev/hugepages")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checksum ok" in r.stdout
    r = run_cli("models", "verify", "--root", str(ryzen), "--mount", "/dev/hugepages", "--json")
    assert r.returncode == 1
    res = {x["name"]: x for x in json.loads(r.stdout)}
    assert res["good.gguf"]["ok"] and not res["junk.bin"]["ok"]


def test_root_refuses_load_and_unload(ryzen, tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(b"x" * 100)
    before = sorted(p.relative_to(ryzen) for p in ryzen.rglob("*"))
    r = run_cli("models", "load", str(src), "--root", str(ryzen), "--mount", "/dev/hugepages")
    assert r.returncode == 2 and "--root" in r.stderr
    r = run_cli("models", "unload", "m.bin", "--root", str(ryzen))
    assert r.returncode == 2 and "--root" in r.stderr
    assert sorted(p.relative_to(ryzen) for p in ryzen.rglob("*")) == before


PROFILE = """
name: t
extends: inference
hugetlbfs:
  mounts:
    - path: /dev/hugepages
      pagesize: 2M
      size: 8GiB
models:
  mount: /dev/hugepages
  declared:
    - name: big.gguf
      size: 10GiB
    - name: here.gguf
      file: /data/here.gguf
    - name: good.gguf
      size: 1GiB
    - name: mystery.gguf
"""


def _pool_tree(ryzen, tmp_path):
    d = ryzen / "dev/hugepages"
    d.mkdir(parents=True, exist_ok=True)
    _store_file(d / "good.gguf", os.urandom(3 * MiB))  # stored: counts as stored, not planned
    (ryzen / "data").mkdir()
    with open(ryzen / "data/here.gguf", "wb") as fh:
        fh.truncate(5 * MiB)
    prof = tmp_path / "p.yaml"
    prof.write_text(PROFILE)
    return prof


def test_pool_needs_on_tree(ryzen, tmp_path):
    prof = _pool_tree(ryzen, tmp_path)
    (n,) = store.pool_needs(Host(ryzen), load_profile(str(prof)).profile)
    assert n.short_pages > 0  # the fake pool is empty: too small
    planned = stored_size(10 << 30, HP) // HP + stored_size(5 * MiB, HP) // HP
    assert n.stored_pages == 2 and n.planned_pages == planned
    assert n.needed_pages * n.page_size == (2 + planned) * HP
    assert n.short_pages == 2 + planned - n.pool.total
    assert n.unknown == ("mystery.gguf",)


def test_pool_too_small_cli(ryzen, tmp_path):
    """`models pool` exits 1 and says what to change when the pool is too small."""
    prof = _pool_tree(ryzen, tmp_path)
    r = run_cli("models", "pool", "--root", str(ryzen), "--profile", str(prof))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "pool too small" in r.stdout and "hosttune apply" in r.stdout


def test_pool_nothing_declared(vm):
    r = run_cli("models", "pool", "--root", str(vm), "--json")
    assert r.returncode == 0, r.stderr


# --- mounts and profile ---------------------------------------------------------------------
def test_resolve_mount_errors(tmp_path, ryzen):
    with pytest.raises(store.ModelStoreError, match="not hugetlbfs"):
        store.resolve_mount(Host("/"), None, str(tmp_path))
    with pytest.raises(store.ModelStoreError, match="does not exist"):
        store.resolve_mount(Host("/"), None, str(tmp_path / "nope"))
    h = Host(ryzen)
    assert store.resolve_mount(h, None, None).path == "/dev/hugepages"  # the only one
    with pytest.raises(store.ModelStoreError, match="not hugetlbfs|does not exist"):
        store.resolve_mount(h, None, "/srv/other")
    mi = ryzen / "proc/self/mountinfo"
    mi.write_text(mi.read_text() + "90 22 0:50 / /mnt/big rw - hugetlbfs none rw,pagesize=1G,"
                  "size=4G\n")
    with pytest.raises(store.ModelStoreError, match="several hugetlbfs mounts"):
        store.resolve_mount(h, None, None)
    big = store.resolve_mount(h, None, "/mnt/big")
    assert big.page_size == 1 << 30 and big.limit_bytes == 4 << 30


def test_profile_models_section(tmp_path):
    from hosttune.profile import load_profile

    p = tmp_path / "p.yaml"
    p.write_text(PROFILE)
    prof = load_profile(str(p)).profile
    assert prof.models is not None and prof.models.declared[0].name == "big.gguf"
    p.write_text("name: t\nmodels:\n  declared:\n    - name: ../etc/passwd\n")
    with pytest.raises(ProfileError, match="model name"):
        load_profile(str(p))
    p.write_text("name: t\nmodels:\n  declared:\n    - name: a.gguf\n      size: lots\n")
    with pytest.raises(ProfileError):
        load_profile(str(p))
    p.write_text("name: t\nmodels:\n  declared:\n    - name: a.gguf\n      nod: 1\n")
    with pytest.raises(ProfileError):
        load_profile(str(p))


# --- the fused checksum and the trailer across versions -----------------------------------------
@given(st.integers(min_value=1, max_value=3 * 4096 + 999), st.integers(min_value=1, max_value=5000))
def test_streamed_pieces_equal_one_shot_leaf(size, piece):
    """What the copy threads compute (a leaf fed piece by piece to a streaming state) is the
    one-shot digest of the leaf, so the tree checksum is the one earlier versions recorded."""
    from hosttune.models.checksum import combine, leaf_digest, new_leaf

    data = os.urandom(size)
    leaf = 4096
    digests = []
    for off in range(0, size, leaf):
        h = new_leaf()
        for p in range(off, min(off + leaf, size), piece):
            h.update(memoryview(data)[p:min(p + piece, off + leaf, size)])
        digests.append(h.intdigest())
    assert digests == [leaf_digest(data[i:i + leaf]) for i in range(0, size, leaf)]
    assert combine(digests) == checksum_bytes(data, 12)


# A trailer exactly as hosttune 0.1.0 wrote it (two-pass checksum over 32 MiB leaves): its
# trailer bytes, pinned, so a format change cannot slip through as "both sides changed".
V1_TRAILER_HEX = ("48544d4f44454c00010000004000000005003000000000000000200000000000"
                  "01000000190000005a6a0f3bbcd8a7d1e803000000000000cd2122ff04f6b18d")


def test_trailer_v1_bytes_still_read():
    raw = bytes.fromhex(V1_TRAILER_HEX)
    tr = parse_trailer(raw, file_size=stored_size(3 * MiB + 5, HP), page_size=HP)
    assert tr is not None and tr.true_size == 3 * MiB + 5 and tr.algo == ALGO_XXH3_TREE
    assert tr.leaf_log2 == 25 and tr.loaded_at == 1000
    assert tr.pack() == raw  # and this version writes the same bytes


def test_old_store_files_verify(ryzen):
    """Files written with other leaf sizes (the trailer records leaf_log2) verify, and so do
    files without a checksum."""
    d = ryzen / "dev/hugepages"
    d.mkdir(parents=True, exist_ok=True)
    data = os.urandom(3 * MiB + 5)
    for name, leaf_log2 in (("l25.bin", 25), ("l20.bin", 20), ("l12.bin", 12)):
        total = stored_size(len(data), HP)
        tr = Trailer(len(data), HP, ALGO_XXH3_TREE, leaf_log2, checksum_bytes(data, leaf_log2), 1)
        (d / name).write_bytes(data + bytes(total - len(data) - TRAILER_LEN) + tr.pack())
    _store_file(d / "none.bin", data, checksum=False)
    h = Host(ryzen)
    mounts = [store.resolve_mount(h, None, "/dev/hugepages")]
    res = {m.name: store.verify_model(h, m) for m in store.list_models(h, mounts)}
    assert set(res) == {"l25.bin", "l20.bin", "l12.bin", "none.bin"}
    assert all(r.ok for r in res.values()), {k: r.problems for k, r in res.items()}
    assert [r.checksum_checked for r in res.values()].count(True) == 3


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_verify_finds_any_changed_byte(tmp_path_factory, data):
    """One flipped bit anywhere in a store file - data, padding or trailer - fails verify."""
    tree = tmp_path_factory.mktemp("t")
    d = tree / "dev/hugepages"
    d.mkdir(parents=True)
    body = bytes(range(256)) * (5 * 4096 + 3)  # ~5 MiB: several pieces, one 32 MiB leaf
    _store_file(d / "m.bin", body)
    raw = bytearray((d / "m.bin").read_bytes())
    pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    (d / "m.bin").write_bytes(bytes(raw))
    h = Host(tree)
    (m,) = store.list_models(h, [store.StoreMount("/dev/hugepages", HP, True, False, None)])
    r = store.verify_model(h, m)
    assert not r.ok, pos
    where = ("checksum mismatch" if pos < len(body) else
             "not zero" if pos < len(raw) - TRAILER_LEN else "no valid hosttune trailer")
    assert where in "; ".join(r.problems), (pos, r.problems)


# --- progress -------------------------------------------------------------------------------
@given(st.integers(min_value=0, max_value=1 << 40), st.integers(min_value=1, max_value=1 << 40),
       st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_progress_rate_is_bytes_over_elapsed(done, total, elapsed):
    p = store.LoadProgress(min(done, total), total, elapsed)
    assert p.rate_bytes_per_s == (p.done / elapsed if elapsed > 0 and p.done else 0.0)
    if p.eta_s is not None:
        assert p.eta_s >= 0


def test_progress_line(capsys):
    from hosttune.cli.models_fast import ProgressLine

    class Tty:
        def __init__(self):
            self.out = []

        def isatty(self):
            return True

        def write(self, s):
            self.out.append(s)

        def flush(self):
            pass

    t = Tty()
    line = ProgressLine("m.gguf", stream=t)
    line(store.LoadProgress(1 << 30, 2 << 30, 0.5))
    line.close()
    text = "".join(t.out)
    assert "2.15 GB/s" in text and "ETA 0.5 s" in text and text.endswith("\n")
    quiet = ProgressLine("m", enabled=False)
    quiet(store.LoadProgress(1, 2, 1.0))
    assert not quiet.drawn


# --- the lean start ---------------------------------------------------------------------------
def test_fast_parse_matches_the_typer_options():
    from hosttune.cli.models_fast import parse_args

    a = parse_args(["load", "/m.gguf", "-n", "x", "--mount=/mnt", "--node", "0", "--replace",
                    "--no-checksum", "--threads", "3", "--json"], {})
    assert a == {"command": "load", "file": "/m.gguf", "name": "x", "mount": "/mnt", "node": 0,
                 "replace": True, "checksum": False, "threads": 3, "json_out": True,
                 "profile": None, "root": None}
    assert parse_args(["verify", "m", "-p", "x.yaml"], {})["profile"] == "x.yaml"
    assert parse_args(["list"], {"HOSTTUNE_PROFILE": "p.yaml"})["profile"] == "p.yaml"
    # everything that is not a plain form goes to typer (usage errors, --help)
    for bad in (["load"], ["load", "a", "b"], ["load", "a", "--threads", "0"],
                ["load", "a", "--node", "x"], ["list", "--help"], ["list", "extra"],
                ["verify", "--mount"], ["load", "a", "--replace=1"], ["unload", "a"],
                ["load", "a", "--bogus"]):
        assert parse_args(bad, {}) is None, bad


def test_lean_start_imports(tmp_path):
    """models list/verify (and load, which takes the same path up to the copy) never import
    typer, rich, pydantic or PyYAML on a cached profile."""
    import subprocess
    import sys

    from tests.conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "cache"))

    def run(*args: str):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "hosttune", "models",
                            *args], capture_output=True, text=True, env=env, check=False)
        mods = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
        return r, {m.split(".")[0] for m in mods} | mods

    heavy = {"typer", "click", "rich", "pydantic", "yaml"}
    assert run("list", "--json")[0].returncode == 0  # caches the default profile
    for args in (["list", "--json"], ["verify", "--json"]):
        r, mods = run(*args)
        assert r.returncode == 0, r.stderr
        assert "hosttune.models.store" in mods and not mods & heavy, mods & heavy
    # load stops at the mount check here (tmp_path is not hugetlbfs): up to there, lean too;
    # rich comes in only to print the one error line
    r, mods = run("load", str(tmp_path / "none.bin"), "--mount", str(tmp_path), "--json")
    assert r.returncode == 2 and "not hugetlbfs" in r.stderr
    assert not mods & (heavy - {"rich"})


def test_userfaultfd_ioctl_numbers():
    """The request numbers <linux/userfaultfd.h> gives (_IOWR(0xAA, nr, struct)) on x86-64 and
    arm64: a wrong size in one of the structs would change them."""
    from hosttune.models import kernel

    assert kernel._UFFDIO_API == 0xC018AA3F
    assert kernel._UFFDIO_REGISTER == 0xC020AA00
    assert kernel._UFFDIO_COPY == 0xC028AA03
