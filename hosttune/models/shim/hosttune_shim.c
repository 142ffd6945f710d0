/* hosttune model-store shim (LD_PRELOAD).
 *
 * Files in the hosttune model store live on hugetlbfs, whose files can only grow in whole huge
 * pages: a model of N bytes is stored as round_up(N + 64, huge page) bytes, and the last 64
 * bytes of the file hold a trailer (magic, true size, check value). Loaders that trust the file
 * size (safetensors: "incomplete metadata, file not fully covered") then fail. For files in the
 * store only, this shim reports the true size through the stat family and lseek/fseek(SEEK_END),
 * and rounds munmap of partial ranges to huge-page boundaries (hugetlbfs refuses unaligned
 * munmap with EINVAL, fs/hugetlbfs + mm/hugetlb.c hugetlb_split()).
 *
 * Rules: everything else passes through untouched (dlsym RTLD_NEXT); a file is "in the store"
 * only if fstatfs says hugetlbfs (0x958458f6) AND its last 64 bytes are a valid trailer whose
 * sizes agree with the file size. No allocation (stack buffers only), no global mutable state
 * besides the resolved function pointers, no copy of the data. Any failure inside the shim
 * falls back to the untouched result of the real call.
 *
 * Keep the trailer layout in sync with hosttune/models/trailer.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <unistd.h>

#define HUGETLBFS_MAGIC_ 0x958458f6
#define TRAILER_LEN 64
#define EXPORT __attribute__((visibility("default")))

static const unsigned char MAGIC[8] = {'H', 'T', 'M', 'O', 'D', 'E', 'L', 0};

/* ---- real functions ---------------------------------------------------------------------- */
typedef int (*stat_fn)(const char *, struct stat *);
typedef int (*fstat_fn)(int, struct stat *);
typedef int (*fstatat_fn)(int, const char *, struct stat *, int);
typedef int (*xstat_fn)(int, const char *, struct stat *);
typedef int (*fxstat_fn)(int, int, struct stat *);
typedef int (*fxstatat_fn)(int, int, const char *, struct stat *, int);
typedef int (*statx_fn)(int, const char *, int, unsigned int, struct statx *);
typedef off_t (*lseek_fn)(int, off_t, int);
typedef int (*fseek_fn)(FILE *, long, int);
typedef int (*fseeko_fn)(FILE *, off_t, int);
typedef int (*munmap_fn)(void *, size_t);

#define REAL(name) static void *volatile real_##name
REAL(stat); REAL(lstat); REAL(fstat); REAL(fstatat);
REAL(stat64); REAL(lstat64); REAL(fstat64); REAL(fstatat64);
REAL(__xstat); REAL(__lxstat); REAL(__fxstat); REAL(__fxstatat);
REAL(__xstat64); REAL(__lxstat64); REAL(__fxstat64); REAL(__fxstatat64);
REAL(statx); REAL(lseek); REAL(lseek64); REAL(fseek); REAL(fseeko); REAL(fseeko64);
REAL(munmap);

static void *resolve(const char *name) {
    void *p = dlsym(RTLD_NEXT, name);
    if (p) return p;
    /* The __xstat family is a compat-only symbol since glibc 2.33: dlsym may miss it. */
    static const char *const versions[] = {"GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0", "GLIBC_2.4",
                                           "GLIBC_2.33", NULL};
    for (int i = 0; versions[i]; i++) {
        p = dlvsym(RTLD_NEXT, name, versions[i]);
        if (p) return p;
    }
    return NULL;
}

/* Benign race: every thread resolves the same pointer. */
#define GET(name) (real_##name ? real_##name : (real_##name = resolve(#name)))

__attribute__((constructor)) static void shim_init(void) {
    GET(stat); GET(lstat); GET(fstat); GET(fstatat);
    GET(stat64); GET(lstat64); GET(fstat64); GET(fstatat64);
    GET(__xstat); GET(__lxstat); GET(__fxstat); GET(__fxstatat);
    GET(__xstat64); GET(__lxstat64); GET(__fxstat64); GET(__fxstatat64);
    GET(statx); GET(lseek); GET(lseek64); GET(fseek); GET(fseeko); GET(fseeko64);
    GET(munmap);
}

/* ---- trailer ----------------------------------------------------------------------------- */
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t fnv1a64(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}

/* The true size of an open store file, or -1 when fd is not one (then nothing changes). */
static int64_t true_size_fd(int fd, uint64_t file_size, uint64_t blksize) {
    if (file_size < TRAILER_LEN || blksize < (1u << 21) || file_size % blksize) return -1;
    struct statfs sfs;
    if (fstatfs(fd, &sfs) != 0 || (uint32_t)sfs.f_type != HUGETLBFS_MAGIC_) return -1;
    unsigned char t[TRAILER_LEN];
    if (pread(fd, t, TRAILER_LEN, (off_t)(file_size - TRAILER_LEN)) != TRAILER_LEN) return -1;
    if (memcmp(t, MAGIC, 8) != 0 || get_u32(t + 8) != 1 || get_u32(t + 12) != TRAILER_LEN)
        return -1;
    if (fnv1a64(t, 56) != get_u64(t + 56)) return -1;
    uint64_t size = get_u64(t + 16), page = get_u64(t + 24);
    if (page == 0 || page != blksize) return -1;
    uint64_t stored = (size + TRAILER_LEN + page - 1) / page * page;
    if (stored != file_size) return -1;
    return (int64_t)size;
}

static int64_t true_size_stat_fd(int fd) {
    struct stat st;
    fstat_fn f = (fstat_fn)GET(fstat);
    if (!f || f(fd, &st) != 0 || !S_ISREG(st.st_mode)) return -1;
    return true_size_fd(fd, (uint64_t)st.st_size, (uint64_t)st.st_blksize);
}

static int looks_like_store(const struct stat *st) {
    return S_ISREG(st->st_mode) && st->st_blksize >= (1 << 21) && st->st_size >= TRAILER_LEN &&
           st->st_size % st->st_blksize == 0;
}

/* Fix st_size of a path-based stat result (opens the file read-only to read the trailer; the
 * inode must be the one stat saw). */
static void fix_path(int dirfd, const char *path, int nofollow, struct stat *st) {
    if (!path || !looks_like_store(st)) return;
    int saved = errno;
    /* Cheap filter before any open(2): filesystems with big st_blksize (CephFS: 4 MiB) are
     * common, hugetlbfs is what matters. */
    struct statfs sfs;
    if ((dirfd == AT_FDCWD || path[0] == '/') &&
        (statfs(path, &sfs) != 0 || (uint32_t)sfs.f_type != HUGETLBFS_MAGIC_)) {
        errno = saved;
        return;
    }
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
                                     (nofollow ? O_NOFOLLOW : 0));
    if (fd >= 0) {
        struct stat st2;
        fstat_fn f = (fstat_fn)GET(fstat);
        if (f && f(fd, &st2) == 0 && st2.st_ino == st->st_ino && st2.st_dev == st->st_dev) {
            int64_t n = true_size_fd(fd, (uint64_t)st->st_size, (uint64_t)st->st_blksize);
            if (n >= 0) st->st_size = (off_t)n;
        }
        close(fd);
    }
    errno = saved;
}

static void fix_fd(int fd, struct stat *st) {
    if (!looks_like_store(st)) return;
    int saved = errno;
    int64_t n = true_size_fd(fd, (uint64_t)st->st_size, (uint64_t)st->st_blksize);
    if (n >= 0) st->st_size = (off_t)n;
    errno = saved;
}

/* ---- the stat family --------------------------------------------------------------------- */
#define NOSYS() do { errno = ENOSYS; return -1; } while (0)

EXPORT int stat(const char *path, struct stat *st) {
    stat_fn f = (stat_fn)GET(stat);
    if (!f) NOSYS();
    int r = f(path, st);
    if (r == 0) fix_path(AT_FDCWD, path, 0, st);
    return r;
}
EXPORT int stat64(const char *path, struct stat64 *st) {
    stat_fn f = (stat_fn)GET(stat64);
    if (!f) NOSYS();
    int r = f(path, (struct stat *)st);
    if (r == 0) fix_path(AT_FDCWD, path, 0, (struct stat *)st);
    return r;
}
EXPORT int lstat(const char *path, struct stat *st) {
    stat_fn f = (stat_fn)GET(lstat);
    if (!f) NOSYS();
    int r = f(path, st);
    if (r == 0) fix_path(AT_FDCWD, path, 1, st);
    return r;
}
EXPORT int lstat64(const char *path, struct stat64 *st) {
    stat_fn f = (stat_fn)GET(lstat64);
    if (!f) NOSYS();
    int r = f(path, (struct stat *)st);
    if (r == 0) fix_path(AT_FDCWD, path, 1, (struct stat *)st);
    return r;
}
EXPORT int fstat(int fd, struct stat *st) {
    fstat_fn f = (fstat_fn)GET(fstat);
    if (!f) NOSYS();
    int r = f(fd, st);
    if (r == 0) fix_fd(fd, st);
    return r;
}
EXPORT int fstat64(int fd, struct stat64 *st) {
    fstat_fn f = (fstat_fn)GET(fstat64);
    if (!f) NOSYS();
    int r = f(fd, (struct stat *)st);
    if (r == 0) fix_fd(fd, (struct stat *)st);
    return r;
}

/* Out of line: glibc declares path nonnull, but Linux >= 6.11 accepts NULL with
 * AT_EMPTY_PATH (statx), and a NULL must never crash us. */
__attribute__((noinline)) static int empty_path(const char *path) {
    return !path || path[0] == 0;
}

static void fix_at(int dirfd, const char *path, int flags, struct stat *st) {
    if ((flags & AT_EMPTY_PATH) && empty_path(path))
        fix_fd(dirfd, st);
    else
        fix_path(dirfd, path, (flags & AT_SYMLINK_NOFOLLOW) != 0, st);
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags) {
    fstatat_fn f = (fstatat_fn)GET(fstatat);
    if (!f) NOSYS();
    int r = f(dirfd, path, st, flags);
    if (r == 0) fix_at(dirfd, path, flags, st);
    return r;
}
EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) {
    fstatat_fn f = (fstatat_fn)GET(fstatat64);
    if (!f) NOSYS();
    int r = f(dirfd, path, (struct stat *)st, flags);
    if (r == 0) fix_at(dirfd, path, flags, (struct stat *)st);
    return r;
}

/* glibc < 2.33 binaries call the versioned __xstat family (still exported for them). */
EXPORT int __xstat(int ver, const char *path, struct stat *st) {
    xstat_fn f = (xstat_fn)GET(__xstat);
    if (!f) return stat(path, st);
    int r = f(ver, path, st);
    if (r == 0) fix_path(AT_FDCWD, path, 0, st);
    return r;
}
EXPORT int __xstat64(int ver, const char *path, struct stat64 *st) {
    xstat_fn f = (xstat_fn)GET(__xstat64);
    if (!f) return stat64(path, st);
    int r = f(ver, path, (struct stat *)st);
    if (r == 0) fix_path(AT_FDCWD, path, 0, (struct stat *)st);
    return r;
}
EXPORT int __lxstat(int ver, const char *path, struct stat *st) {
    xstat_fn f = (xstat_fn)GET(__lxstat);
    if (!f) return lstat(path, st);
    int r = f(ver, path, st);
    if (r == 0) fix_path(AT_FDCWD, path, 1, st);
    return r;
}
EXPORT int __lxstat64(int ver, const char *path, struct stat64 *st) {
    xstat_fn f = (xstat_fn)GET(__lxstat64);
    if (!f) return lstat64(path, st);
    int r = f(ver, path, (struct stat *)st);
    if (r == 0) fix_path(AT_FDCWD, path, 1, (struct stat *)st);
    return r;
}
EXPORT int __fxstat(int ver, int fd, struct stat *st) {
    fxstat_fn f = (fxstat_fn)GET(__fxstat);
    if (!f) return fstat(fd, st);
    int r = f(ver, fd, st);
    if (r == 0) fix_fd(fd, st);
    return r;
}
EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) {
    fxstat_fn f = (fxstat_fn)GET(__fxstat64);
    if (!f) return fstat64(fd, st);
    int r = f(ver, fd, (struct stat *)st);
    if (r == 0) fix_fd(fd, (struct stat *)st);
    return r;
}
EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags) {
    fxstatat_fn f = (fxstatat_fn)GET(__fxstatat);
    if (!f) return fstatat(dirfd, path, st, flags);
    int r = f(ver, dirfd, path, st, flags);
    if (r == 0) fix_at(dirfd, path, flags, st);
    return r;
}
EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags) {
    fxstatat_fn f = (fxstatat_fn)GET(__fxstatat64);
    if (!f) return fstatat64(dirfd, path, st, flags);
    int r = f(ver, dirfd, path, (struct stat *)st, flags);
    if (r == 0) fix_at(dirfd, path, flags, (struct stat *)st);
    return r;
}

/* statx: Rust's std (safetensors) and coreutils use it. */
EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx) {
    statx_fn f = (statx_fn)GET(statx);
    if (!f) NOSYS();
    int r = f(dirfd, path, flags, mask, stx);
    if (r != 0 || !(stx->stx_mask & STATX_SIZE) || !S_ISREG(stx->stx_mode)) return r;
    uint64_t blk = stx->stx_blksize, size = stx->stx_size;
    if (blk < (1u << 21) || size < TRAILER_LEN || size % blk) return r;
    int saved = errno;
    int fd;
    int own = 0;
    if ((flags & AT_EMPTY_PATH) && empty_path(path)) {
        fd = dirfd;
    } else {
        fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
                                     ((flags & AT_SYMLINK_NOFOLLOW) ? O_NOFOLLOW : 0));
        own = 1;
    }
    if (fd >= 0) {
        struct stat st2;
        fstat_fn fs = (fstat_fn)GET(fstat);
        if (fs && fs(fd, &st2) == 0 && (uint64_t)st2.st_ino == stx->stx_ino) {
            int64_t n = true_size_fd(fd, size, blk);
            if (n >= 0) stx->stx_size = (uint64_t)n;
        }
        if (own) close(fd);
    }
    errno = saved;
    return r;
}

/* ---- seeking ----------------------------------------------------------------------------- */
EXPORT off_t lseek(int fd, off_t off, int whence) {
    lseek_fn f = (lseek_fn)GET(lseek);
    if (!f) NOSYS();
    if (whence == SEEK_END) {
        int saved = errno;
        int64_t n = true_size_stat_fd(fd);
        errno = saved;
        if (n >= 0) return f(fd, (off_t)n + off, SEEK_SET);
    }
    return f(fd, off, whence);
}
EXPORT off_t lseek64(int fd, off_t off, int whence) {
    lseek_fn f = (lseek_fn)GET(lseek64);
    if (!f) NOSYS();
    if (whence == SEEK_END) {
        int saved = errno;
        int64_t n = true_size_stat_fd(fd);
        errno = saved;
        if (n >= 0) return f(fd, (off_t)n + off, SEEK_SET);
    }
    return f(fd, off, whence);
}

/* glibc's fseek(SEEK_END) sizes the file with its internal fstat, which LD_PRELOAD cannot
 * reach (libio/fileops.c _IO_new_file_seekoff): translate to SEEK_SET from the true size. */
static int64_t stream_true_size(FILE *fp) {
    int saved = errno;
    int fd = fileno(fp);
    int64_t n = fd >= 0 ? true_size_stat_fd(fd) : -1;
    errno = saved;
    return n;
}
EXPORT int fseek(FILE *fp, long off, int whence) {
    fseek_fn f = (fseek_fn)GET(fseek);
    if (!f) NOSYS();
    if (whence == SEEK_END) {
        int64_t n = stream_true_size(fp);
        if (n >= 0) return f(fp, (long)(n + off), SEEK_SET);
    }
    return f(fp, off, whence);
}
EXPORT int fseeko(FILE *fp, off_t off, int whence) {
    fseeko_fn f = (fseeko_fn)GET(fseeko);
    if (!f) NOSYS();
    if (whence == SEEK_END) {
        int64_t n = stream_true_size(fp);
        if (n >= 0) return f(fp, (off_t)n + off, SEEK_SET);
    }
    return f(fp, off, whence);
}
EXPORT int fseeko64(FILE *fp, off_t off, int whence) {
    fseeko_fn f = (fseeko_fn)GET(fseeko64);
    if (!f) NOSYS();
    if (whence == SEEK_END) {
        int64_t n = stream_true_size(fp);
        if (n >= 0) return f(fp, (off_t)n + off, SEEK_SET);
    }
    return f(fp, off, whence);
}

/* ---- munmap ------------------------------------------------------------------------------ */
/* One /proc/self/maps line: "start-end perms offset dev inode   path". */
struct vma {
    uintptr_t start, end;
    uint64_t pgoff;
    char path[512];
};

static uintptr_t parse_hex(const char **p) {
    uintptr_t v = 0;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9') v = v * 16 + (uintptr_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uintptr_t)(c - 'a' + 10);
        else break;
    }
    return v;
}

static int parse_maps_line(const char *line, struct vma *v) {
    const char *p = line;
    v->start = parse_hex(&p);
    if (*p++ != '-') return 0;
    v->end = parse_hex(&p);
    while (*p == ' ') p++;
    while (*p && *p != ' ') p++; /* perms */
    while (*p == ' ') p++;
    v->pgoff = parse_hex(&p);
    for (int field = 0; field < 2; field++) { /* dev, inode */
        while (*p == ' ') p++;
        while (*p && *p != ' ') p++;
    }
    while (*p == ' ') p++;
    size_t n = strlen(p);
    if (n >= sizeof v->path) n = sizeof v->path - 1;
    memcpy(v->path, p, n);
    v->path[n] = 0;
    return 1;
}

/* Find the mapping that contains addr (stack buffers only, no stdio: no allocation). */
static int find_vma(uintptr_t addr, struct vma *out) {
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[4096], line[1024];
    size_t ll = 0;
    int found = 0;
    ssize_t n;
    while (!found && (n = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n && !found; i++) {
            if (buf[i] != '\n') {
                if (ll < sizeof line - 1) line[ll++] = buf[i];
                continue;
            }
            line[ll] = 0;
            ll = 0;
            struct vma v;
            if (parse_maps_line(line, &v) && v.start <= addr && addr < v.end) {
                *out = v;
                found = 1;
            }
        }
    }
    close(fd);
    return found;
}

/* For a store-file mapping containing addr: its huge page size and the address where the
 * model's data ends in this mapping (bytes past it are padding and trailer). */
static int store_mapping(uintptr_t addr, uint64_t *page, uintptr_t *data_end) {
    struct vma v;
    if (!find_vma(addr, &v) || v.path[0] != '/') return 0;
    int fd = open(v.path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return 0;
    struct stat st;
    int ok = 0;
    fstat_fn f = (fstat_fn)GET(fstat);
    if (f && f(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        int64_t n = true_size_fd(fd, (uint64_t)st.st_size, (uint64_t)st.st_blksize);
        if (n >= 0 && v.start % (uint64_t)st.st_blksize == 0) {
            *page = (uint64_t)st.st_blksize;
            *data_end = v.start + (uintptr_t)((uint64_t)n > v.pgoff ? (uint64_t)n - v.pgoff : 0);
            ok = 1;
        }
    }
    close(fd);
    return ok;
}

/* hugetlbfs mappings can only be unmapped in whole huge pages (EINVAL otherwise). For ranges
 * in store mappings, round inward (the caller may still use the rest of a partly released
 * page), except at the end of the model's data where the rest of the page is only padding:
 * there round up, so a munmap(addr, true_size) of a whole mapping releases all of it. Pages
 * only partly released stay mapped until the process exits: never unmaps bytes in use. */
EXPORT int munmap(void *addr, size_t len) {
    munmap_fn f = (munmap_fn)GET(munmap);
    if (!f) NOSYS();
    int r = f(addr, len);
    if (r == 0 || errno != EINVAL || len == 0) return r;
    int saved = errno;
    uintptr_t start = (uintptr_t)addr, end = start + len;
    uint64_t page_s = 0, page_e = 0;
    uintptr_t dend_s = 0, dend_e = 0;
    if (!store_mapping(start, &page_s, &dend_s) || !store_mapping(end - 1, &page_e, &dend_e)) {
        errno = saved;
        return r;
    }
    /* Callers release at base-page granularity (llama.cpp's unmap_fragment rounds the end of
     * the tail fragment down to 4 KiB), so "reaches the end of the data" means reaching the
     * last base page boundary before it. */
    uintptr_t base = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t dfloor = dend_e / base * base;
    uintptr_t ns = (start + page_s - 1) / page_s * page_s;
    uintptr_t ne = end % page_e == 0 ? end
                   : end >= dfloor  ? (end + page_e - 1) / page_e * page_e
                                    : end / page_e * page_e;
    if (ns >= ne) return 0; /* nothing whole to release: the pages stay mapped */
    r = f((void *)ns, ne - ns);
    if (r != 0) errno = saved;
    return r;
}
