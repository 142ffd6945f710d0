/* membw: multi-threaded memory READ bandwidth, the ceiling for llama.cpp decode.
 *
 *   cc -O2 -pthread -o membw membw.c && ./membw MiB THREADS PASSES
 *
 * Each thread sums 64-bit words of its own slice of a buffer much larger than the last-level
 * cache (default 1 GiB) with 8 independent accumulators, so the loop is bound by loads, not by
 * the add chain. The buffer is written first (every page faulted in and backed). Prints the best
 * pass as "bytes seconds checksum"; GB/s = bytes / seconds. The checksum keeps the compiler from
 * dropping the loads. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct slice { const uint64_t *p; size_t n; uint64_t sum; };
static pthread_barrier_t start, done;
static int passes;
static struct slice *sl;

static uint64_t sum_slice(const uint64_t *p, size_t n) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
        a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
    }
    for (; i < n; i++) a0 += p[i];
    return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

static void *worker(void *arg) {
    struct slice *s = arg;
    for (int k = 0; k < passes; k++) {
        pthread_barrier_wait(&start);
        s->sum += sum_slice(s->p, s->n);
        pthread_barrier_wait(&done);
    }
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    int nt = argc > 2 ? atoi(argv[2]) : 1;
    passes = argc > 3 ? atoi(argv[3]) : 5;
    if (mib == 0 || nt < 1 || passes < 1) { fprintf(stderr, "usage: membw MiB THREADS PASSES\n"); return 2; }
    size_t words = mib * 1024 * 1024 / 8;
    uint64_t *buf = malloc(words * 8);
    if (!buf) { perror("malloc"); return 1; }
    for (size_t i = 0; i < words; i++) buf[i] = i;
    sl = calloc(nt, sizeof *sl);
    pthread_t *th = calloc(nt, sizeof *th);
    pthread_barrier_init(&start, NULL, nt + 1);
    pthread_barrier_init(&done, NULL, nt + 1);
    size_t per = words / nt;
    for (int t = 0; t < nt; t++) {
        sl[t].p = buf + per * t;
        sl[t].n = t == nt - 1 ? words - per * t : per;
        pthread_create(&th[t], NULL, worker, &sl[t]);
    }
    double best = 1e30;
    for (int k = 0; k < passes; k++) {
        double t0 = now();
        pthread_barrier_wait(&start);
        pthread_barrier_wait(&done);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    uint64_t sum = 0;
    for (int t = 0; t < nt; t++) { pthread_join(th[t], NULL); sum += sl[t].sum; }
    printf("%zu %.9f %llu\n", words * 8, best, (unsigned long long)sum);
    return 0;
}
