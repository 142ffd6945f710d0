"""The LD_PRELOAD shim with real loaders on a real hugetlbfs store (root, CI-mandatory), and
its pass-through behaviour everywhere else."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from hosttune.host import Host
from hosttune.models import store
from hosttune.models.trailer import Trailer
from tests.conftest import run_cli
from tests.models_helpers import py

MiB = 1 << 20

LLAMA_PATTERN_C = r"""
/* llama.cpp's access pattern (src/llama-mmap.cpp): fopen/fread the header, fseek/ftell for
 * the size, mmap MAP_SHARED|MAP_POPULATE, posix_madvise, unmap_fragment() with 4 KiB-aligned
 * fragments, then munmap what is left. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/mman.h>

static uint64_t sum(const unsigned char *p, size_t a, size_t b) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = a; i < b; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return h;
}

static int fails = 0;
#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, __VA_ARGS__); fails++; } } while (0)

static void align_range(size_t *first, size_t *last, size_t page) {
    size_t off = *first & (page - 1);
    if (off) *first += page - off;
    *last &= ~(page - 1);
    if (*last <= *first) *last = *first;
}

int main(int argc, char **argv) {
    const char *path = argv[1];
    long expect = atol(argv[2]);
    size_t first = (size_t)atol(argv[3]), last = (size_t)atol(argv[4]);
    FILE *fp = fopen(path, "rb");
    if (!fp) { perror("fopen"); return 2; }
    char magic[4];
    CHECK(fread(magic, 1, 4, fp) == 4, "fread header\n");
    CHECK(fseek(fp, 0, SEEK_END) == 0, "fseek\n");
    long size = ftell(fp);
    CHECK(size == expect, "ftell says %ld, true size %ld\n", size, expect);
    CHECK(fseek(fp, 0, SEEK_SET) == 0, "fseek set\n");
    int fd = fileno(fp);
    unsigned char *addr = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (addr == MAP_FAILED) { perror("mmap"); return 2; }
    int rc = posix_madvise(addr, (size_t)size, POSIX_MADV_WILLNEED);
    printf("madvise_willneed=%d\n", rc);
    rc = posix_madvise(addr, (size_t)size, POSIX_MADV_RANDOM);
    printf("madvise_random=%d\n", rc); /* EINVAL on hugetlb; llama.cpp only warns */
    CHECK(memcmp(addr, magic, 4) == 0, "mapping differs from fread\n");
    uint64_t mid = sum(addr, first, last);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    /* unmap_fragment(0, first) */
    size_t a = 0, b = first;
    align_range(&a, &b, page);
    if (b > a) CHECK(munmap(addr + a, b - a) == 0, "munmap head: %m\n");
    /* unmap_fragment(last, size) */
    a = last; b = (size_t)size;
    align_range(&a, &b, page);
    size_t keep_first = first + ((first & (page - 1)) ? page - (first & (page - 1)) : 0);
    size_t keep_last = last & ~(page - 1);
    if (b > a) CHECK(munmap(addr + a, b - a) == 0, "munmap tail: %m\n");
    /* what is left must still be there */
    CHECK(sum(addr, first, last) == mid, "data changed after unmapping fragments\n");
    /* ~llama_mmap: munmap the remaining fragment */
    CHECK(munmap(addr + keep_first, keep_last - keep_first) == 0, "munmap rest: %m\n");
    fclose(fp);
    /* how much of the file is still mapped (partly released huge pages stay) */
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[1024];
    unsigned long left = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long s, e;
        if (strstr(line, path) && sscanf(line, "%lx-%lx", &s, &e) == 2) left += e - s;
    }
    fclose(maps);
    printf("still_mapped=%lu\n", left);
    return fails ? 1 : 0;
}
"""

STRESS_C = r"""
/* Many threads hammer every shimmed call on a store file and on an ordinary file. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *store_path, *plain_path;
static long true_size, plain_size;
static int iters;
static volatile int errors;

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < iters; i++) {
        struct stat st;
        struct statx sx;
        if (stat(store_path, &st) || st.st_size != true_size) __sync_fetch_and_add(&errors, 1);
        if (lstat(store_path, &st) || st.st_size != true_size) __sync_fetch_and_add(&errors, 1);
        if (stat(plain_path, &st) || st.st_size != plain_size) __sync_fetch_and_add(&errors, 1);
        if (statx(AT_FDCWD, store_path, 0, STATX_SIZE, &sx) || (long)sx.stx_size != true_size)
            __sync_fetch_and_add(&errors, 1);
        int fd = open(store_path, O_RDONLY);
        if (fd < 0) { __sync_fetch_and_add(&errors, 1); continue; }
        if (fstat(fd, &st) || st.st_size != true_size) __sync_fetch_and_add(&errors, 1);
        if (fstatat(fd, "", &st, AT_EMPTY_PATH) || st.st_size != true_size)
            __sync_fetch_and_add(&errors, 1);
        if (lseek(fd, 0, SEEK_END) != true_size) __sync_fetch_and_add(&errors, 1);
        void *p = mmap(NULL, (size_t)true_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) { __sync_fetch_and_add(&errors, 1); close(fd); continue; }
        if (((volatile char *)p)[true_size - 1] == 0x7f && 0) puts("");
        if (munmap(p, (size_t)true_size)) __sync_fetch_and_add(&errors, 1);
        close(fd);
        FILE *fp = fopen(store_path, "rb");
        if (!fp || fseeko(fp, 0, SEEK_END) || ftello(fp) != true_size)
            __sync_fetch_and_add(&errors, 1);
        if (fp) fclose(fp);
        fp = fopen(plain_path, "rb");
        if (!fp || fseek(fp, -1, SEEK_END) || ftell(fp) != plain_size - 1)
            __sync_fetch_and_add(&errors, 1);
        if (fp) fclose(fp);
    }
    return NULL;
}

int main(int argc, char **argv) {
    store_path = argv[1]; true_size = atol(argv[2]);
    plain_path = argv[3]; plain_size = atol(argv[4]);
    int n = atoi(argv[5]); iters = atoi(argv[6]);
    pthread_t t[64];
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    /* no mapping of the store file may be left behind */
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[1024];
    int left = 0;
    while (fgets(line, sizeof line, maps)) if (strstr(line, store_path)) left++;
    fclose(maps);
    printf("errors=%d left=%d\n", errors, left);
    return errors || left ? 1 : 0;
}
"""


def compile_c(tmp_path, name: str, source: str) -> str:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    exe = tmp_path / name
    subprocess.run(["cc", "-O1", "-Wall", "-pthread", "-o", str(exe), str(src)], check=True,
                   capture_output=True)
    return str(exe)


def run(argv, preload=None):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = str(preload)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def load(hs, src, name=None) -> store.StoredModel:
    m = store.resolve_mount(Host("/"), None, str(hs.mount))
    return store.load_model(Host("/"), str(src), m, name=name, checksum=False).model


# --- real loaders -------------------------------------------------------------------------
def test_safetensors_needs_the_shim(hugestore, tmp_path, shim_so):
    from safetensors.numpy import save_file

    tensors = {"w": np.arange(700_000, dtype=np.float32), "b": np.ones(17, dtype=np.int64)}
    src = tmp_path / "m.safetensors"
    save_file(tensors, str(src))
    m = load(hugestore, src)
    code = ("from safetensors.numpy import load_file; import numpy as np; "
            f"d = load_file({m.path!r}); "
            "print(int(d['w'].sum()), int(d['b'].sum()), d['w'].shape[0])")
    without = py(code)
    assert without.returncode != 0
    assert "incomplete metadata" in without.stderr  # the padded file is refused
    with_shim = py(code, preload=shim_so)
    assert with_shim.returncode == 0, with_shim.stderr
    assert with_shim.stdout.split() == [str(int(tensors["w"].sum())), "17", "700000"]
    store.unload_model(Host("/"), m)
    hugestore.assert_clean()


def test_llama_access_pattern(hugestore, tmp_path, shim_so):
    exe = compile_c(tmp_path, "llama_pattern", LLAMA_PATTERN_C)
    src = tmp_path / "m.gguf"
    size = 9 * MiB + 12345
    src.write_bytes(b"GGUF" + os.urandom(size - 4))
    m = load(hugestore, src)
    first, last = 3 * MiB + 123, size - (3 * MiB // 2) - 7
    argv = [exe, m.path, str(size), str(first), str(last)]
    res = run(argv, preload=shim_so)
    assert res.returncode == 0, res.stdout + res.stderr
    out = dict(line.split("=") for line in res.stdout.split())
    assert out["madvise_willneed"] == "0"
    # only the two huge pages that the kept range shares with the released fragments stay
    assert int(out["still_mapped"]) <= 2 * 2 * MiB
    without = run(argv)
    assert without.returncode != 0
    assert "ftell says" in without.stderr and "munmap" in without.stderr
    store.unload_model(Host("/"), m)
    hugestore.assert_clean()


def test_stress_threads(hugestore, tmp_path, shim_so):
    exe = compile_c(tmp_path, "stress", STRESS_C)
    src = tmp_path / "m.bin"
    size = 3 * MiB + 5
    src.write_bytes(os.urandom(size))
    m = load(hugestore, src)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"p" * 4097)
    res = run([exe, m.path, str(size), str(plain), "4097", "8", "300"], preload=shim_so)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "errors=0 left=0"
    store.unload_model(Host("/"), m)
    hugestore.assert_clean()


def test_legacy_xstat_and_python_calls(hugestore, tmp_path, shim_so):
    """Binaries built against glibc < 2.33 call __xstat/__fxstat*; Python uses stat/fstatat/
    lseek; a hugetlbfs file without trailer is left alone."""
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(MiB + 1))
    m = load(hugestore, src)
    import mmap

    raw = hugestore.mount / "raw.bin"  # on hugetlbfs, but no trailer: not a store file
    fd = os.open(raw, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 2 * MiB)
    mm = mmap.mmap(fd, 2 * MiB)
    mm[-64:] = Trailer(10, 2 * MiB).pack()[:-1] + b"\0"  # bad check value
    mm.close()
    os.close(fd)
    code = f"""
import ctypes, os
libc = ctypes.CDLL(None)
buf = ctypes.create_string_buffer(256)
p = {m.path!r}.encode()
sizes = []
for fn, args in (("__xstat", (1, p)), ("__xstat64", (1, p)), ("__lxstat64", (1, p))):
    assert getattr(libc, fn)(*args, buf) == 0, fn
    sizes.append(int.from_bytes(buf.raw[48:56], "little"))  # st_size (x86_64 / aarch64)
fd = os.open(p, os.O_RDONLY)
assert libc.__fxstat64(1, fd, buf) == 0
sizes.append(int.from_bytes(buf.raw[48:56], "little"))
assert libc.__fxstatat64(1, -100, p, buf, 0) == 0
sizes.append(int.from_bytes(buf.raw[48:56], "little"))
sizes += [os.stat(p).st_size, os.fstat(fd).st_size, os.lseek(fd, 0, os.SEEK_END),
          os.stat(p, follow_symlinks=False).st_size]
print(*sizes, os.stat({str(raw)!r}).st_size)
"""
    res = py(code, preload=shim_so)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(MiB + 1)] * 9 + [str(2 * MiB)]
    store.unload_model(Host("/"), m)
    os.unlink(raw)
    hugestore.assert_clean()


# --- no root needed ------------------------------------------------------------------------
def test_shim_inactive_outside_hugetlbfs(tmp_path, shim_so):
    """A regular file that even ends in a valid trailer keeps its real size."""
    f = tmp_path / "fake.bin"
    f.write_bytes(bytes(2 * MiB - 64) + Trailer(10, 2 * MiB).pack())
    code = (f"import os; p = {str(f)!r}; fd = os.open(p, os.O_RDONLY); "
            "print(os.stat(p).st_size, os.fstat(fd).st_size, os.lseek(fd, 0, 2), "
            "open(p, 'rb').seek(0, 2))")
    res = py(code, preload=shim_so)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(2 * MiB)] * 4
    # and ordinary programs keep working under it
    res = run(["ls", "-l", str(tmp_path)], preload=shim_so)
    assert res.returncode == 0 and "fake.bin" in res.stdout
    res = run(["stat", "-c", "%s", str(f)], preload=shim_so)  # coreutils: statx
    assert res.stdout.strip() == str(2 * MiB)


def test_shim_build_cli(tmp_path, vm):
    out = tmp_path / "lib" / "shim.so"
    r = run_cli("shim", "build", "--output", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    syms = subprocess.run(["nm", "-D", "--defined-only", str(out)], capture_output=True,
                          text=True, check=True).stdout.split()
    for s in ("stat", "fstat", "lstat", "fstatat", "statx", "lseek", "fseek", "fseeko",
              "munmap", "__fxstat64", "__xstat", "fstatat64"):
        assert s in syms
    assert "shim_init" not in syms and "true_size_fd" not in syms  # internals stay hidden
    r = run_cli("shim", "build", "--root", str(vm), "--json")
    assert r.returncode == 0, r.stderr
    assert '"skipped": true' in r.stdout
    assert not (vm / "usr/local/lib/hosttune/libhosttune-shim.so").exists()
    r = run_cli("shim", "build", "--output", str(out), "--cc", "/nonexistent/cc")
    assert r.returncode == 2 and "error" in r.stderr


@pytest.mark.parametrize("size", [1, 63, 64, 2 * MiB - 64, 2 * MiB - 63, 2 * MiB, 5 * MiB + 3])
def test_c_and_python_agree_on_trailers(tmp_path, size):
    """The C check value (FNV-1a) and layout match trailer.py (compiled C vs Python)."""
    c = r"""
#include <stdio.h>
#include <stdint.h>
#include <string.h>
static uint64_t fnv1a64(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}
int main(void) {
    unsigned char t[64];
    if (fread(t, 1, 64, stdin) != 64) return 2;
    uint64_t want = 0, size = 0;
    for (int i = 7; i >= 0; i--) { want = (want << 8) | t[56 + i]; size = (size << 8) | t[16 + i]; }
    printf("%d %llu\n", fnv1a64(t, 56) == want, (unsigned long long)size);
    return 0;
}
"""
    exe = compile_c(tmp_path, "fnv", c)
    tr = Trailer(size, 2 * MiB, 1, 25, 0xDEADBEEF, 7)
    res = subprocess.run([exe], input=tr.pack(), capture_output=True, check=True)
    assert res.stdout.decode().split() == ["1", str(size)]
