// The decode kernel's weight streaming in isolation: a C transcription of rl-policy's AVX-512
// f32 tile (4 weight rows x 4 rows of x, 16-wide FMA chains, crates/rl-policy/src/ops/blas.rs
// `tile_avx512`) over a weight matrix too large for the caches, with four prefetch schemes.
// It measured the choice of `prefetch_rows` (docs/benchmarks.md, 2026-12-05).
//
//   gcc -O3 -mavx512f -mfma scripts/bench/decode_prefetch.c -o /tmp/decode_prefetch
//   HUGE=1 /tmp/decode_prefetch 576 49152 3 16     # k, weight rows, repeats, rows of x
//
// Schemes: 0 none; 1 the group's first tile prefetches the whole next group into L1 (rl-zero's
// kernel before 2026-12-05); 2 the rows of the group D ahead dealt out over the group's tiles,
// into L1; 3 the same into L2 (the kernel since). HUGE=1 puts the weights on huge pages.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void dots(int m, int js, int k, const float *x, const float *w, float *c, int mode, int d) {
  int tiles = m / 4;
  for (int j = 0; j < js; j += 4) {
    const float *wj = w + (size_t)j * k, *ahead = wj + 4 * (size_t)k * d;
    for (int i = 0; i < m; i += 4) {
      const float *xi = x + (size_t)i * k;
      __m512 a[4][4];
      for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) a[r][q] = _mm512_setzero_ps();
      int t = i / 4;
      int lo = (t * 4 + tiles - 1) / tiles, hi = ((t + 1) * 4 + tiles - 1) / tiles;
      if (hi > 4) hi = 4;
      for (int s = 0; s < k; s += 16) {
        if (mode == 1 && i == 0)
          for (int q = 0; q < 4; q++) _mm_prefetch((const char *)(ahead + q * k + s), _MM_HINT_T0);
        if (mode == 2)
          for (int q = lo; q < hi; q++) _mm_prefetch((const char *)(ahead + q * k + s), _MM_HINT_T0);
        if (mode == 3)
          for (int q = lo; q < hi; q++) _mm_prefetch((const char *)(ahead + q * k + s), _MM_HINT_T1);
        __m512 wv[4];
        for (int q = 0; q < 4; q++) wv[q] = _mm512_loadu_ps(wj + q * k + s);
        for (int r = 0; r < 4; r++) {
          __m512 xv = _mm512_loadu_ps(xi + r * k + s);
          for (int q = 0; q < 4; q++) a[r][q] = _mm512_fmadd_ps(xv, wv[q], a[r][q]);
        }
      }
      for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) c[(i + r) * js + j + q] = _mm512_reduce_add_ps(a[r][q]);
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s K WEIGHT_ROWS REPEATS X_ROWS(multiple of 4)\n", argv[0]);
    return 2;
  }
  int k = atoi(argv[1]), js = atoi(argv[2]), reps = atoi(argv[3]), m = atoi(argv[4]);
  size_t huge = 2 << 20, wbytes = ((size_t)(js + 64) * k * 4 + huge) & ~(huge - 1);
  float *x = aligned_alloc(64, (size_t)m * k * 4), *w = aligned_alloc(huge, wbytes);
  float *c = aligned_alloc(64, (size_t)m * (js + 16) * 4);
  if (getenv("HUGE")) printf("madvise(MADV_HUGEPAGE): %d\n", madvise(w, wbytes, MADV_HUGEPAGE));
  for (int i = 0; i < m * k; i++) x[i] = 0.001f * (i % 7);
  for (size_t i = 0; i < (size_t)(js + 64) * k; i++) w[i] = 0.001f * (i % 5);
  int schemes[][2] = {{0, 1}, {1, 1}, {2, 1}, {2, 2}, {3, 1}, {3, 2}, {3, 4}};
  for (int round = 0; round < 2; round++)
    for (int s = 0; s < 7; s++) {
      int mode = schemes[s][0], d = schemes[s][1];
      double t0 = now();
      for (int r = 0; r < reps; r++) dots(m, js, k, x, w, c, mode, d);
      double dt = now() - t0;
      printf("rows=%d k=%d scheme=%d ahead=%d: %.1f GFLOP/s, %.1f GB/s of weights\n", m, k, mode, d,
             2.0 * m * js * k * reps / dt / 1e9, 4.0 * js * k * reps / dt / 1e9);
    }
  return 0;
}
