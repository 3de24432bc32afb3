// CUDA kernels of rl-policy's fused ops (crates/rl-policy/src/ops.rs), compiled to PTX by build.rs
// when the `cuda` feature is on. Each kernel computes the same formula as the CPU kernel of the
// same name in ops.rs, which is its test oracle (`cuda_kernels_match_cpu` in ops.rs, run only on a
// machine with a GPU).
//
// Element types: f32, f64, bf16, f16 (suffixes _f32, _f64, _bf16, _f16). Half types are computed in
// f32; reductions that the CPU kernels accumulate in f64 (RMS statistics, log-sum-exp) are
// accumulated in f64 here too.
//
// Row kernels run one block of BLOCK threads per row; element-wise kernels one thread per element.
// All inputs are contiguous.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define BLOCK 256

// ---- element type <-> compute type -------------------------------------------------------------

template <typename T> struct Compute { typedef T type; };
template <> struct Compute<__nv_bfloat16> { typedef float type; };
template <> struct Compute<__half> { typedef float type; };

__device__ __forceinline__ float to_c(float v) { return v; }
__device__ __forceinline__ double to_c(double v) { return v; }
__device__ __forceinline__ float to_c(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_c(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_c(float v);
template <typename T> __device__ __forceinline__ T from_c(double v);
template <> __device__ __forceinline__ float from_c<float>(float v) { return v; }
template <> __device__ __forceinline__ float from_c<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ double from_c<double>(double v) { return v; }
template <> __device__ __forceinline__ double from_c<double>(float v) { return (double)v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_c<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_c<__nv_bfloat16>(double v) {
  return __float2bfloat16((float)v);
}
template <> __device__ __forceinline__ __half from_c<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __half from_c<__half>(double v) {
  return __float2half((float)v);
}

// ---- block reductions (every thread gets the result) -------------------------------------------

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename A, bool MAX> __device__ A block_reduce(A v) {
  __shared__ A buf[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  const A identity = MAX ? (A)-INFINITY : (A)0;
  v = MAX ? warp_max(v) : warp_sum(v);
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? buf[lane] : identity;
    v = MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0) buf[0] = v;
  }
  __syncthreads();
  const A r = buf[0];
  __syncthreads();  // buf is reused by the next reduction
  return r;
}

template <typename A> __device__ __forceinline__ A block_sum(A v) { return block_reduce<A, false>(v); }
template <typename A> __device__ __forceinline__ A block_max(A v) { return block_reduce<A, true>(v); }

// ---- RMS norm ----------------------------------------------------------------------------------

// 1 / sqrt(mean(x^2) + eps) of one row, accumulated in f64.
template <typename T> __device__ double rms_scale(const T *x, int h, double eps) {
  double ss = 0.0;
  for (int j = threadIdx.x; j < h; j += blockDim.x) {
    const double v = (double)to_c(x[j]);
    ss += v * v;
  }
  ss = block_sum(ss);
  return 1.0 / sqrt(ss / h + eps);
}

// y = x * r * w per row of h values. Grid: rows.
template <typename T> __device__ void rms_norm(const T *x, const T *w, T *y, int h, double eps) {
  typedef typename Compute<T>::type C;
  const size_t row = blockIdx.x;
  x += row * h;
  y += row * h;
  const C r = (C)rms_scale(x, h, eps);
  for (int j = threadIdx.x; j < h; j += blockDim.x) y[j] = from_c<T>(to_c(x[j]) * r * to_c(w[j]));
}

// Backward, rows: gx = r*g*w - x*r^3*sum(g*w*x)/h into out[row], r into scale[row]. Grid: rows.
template <typename T>
__device__ void rms_norm_bwd_rows(const T *x, const T *w, const T *g, T *out, double *scale, int h,
                                  double eps) {
  typedef typename Compute<T>::type C;
  const size_t row = blockIdx.x;
  x += row * h;
  g += row * h;
  out += row * h;
  const double r = rms_scale(x, h, eps);
  double dot = 0.0;
  for (int j = threadIdx.x; j < h; j += blockDim.x)
    dot += (double)to_c(g[j]) * (double)to_c(w[j]) * (double)to_c(x[j]);
  dot = block_sum(dot);
  const C rc = (C)r, c = (C)(r * r * r * dot / h);
  for (int j = threadIdx.x; j < h; j += blockDim.x)
    out[j] = from_c<T>(rc * to_c(g[j]) * to_c(w[j]) - to_c(x[j]) * c);
  if (threadIdx.x == 0) scale[row] = r;
}

// Backward, weight: gw[j] = sum over rows of g*x*r, written to row n of out. Grid: ceil(h/BLOCK).
template <typename T>
__device__ void rms_norm_bwd_weight(const T *x, const T *g, const double *scale, T *out, int n,
                                    int h) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= h) return;
  double acc = 0.0;
  for (int i = 0; i < n; ++i) {
    const size_t e = (size_t)i * h + j;
    acc += (double)to_c(g[e]) * (double)to_c(x[e]) * scale[i];
  }
  out[(size_t)n * h + j] = from_c<T>(acc);
}

// ---- head split / merge with the rotary embedding ----------------------------------------------

// Moves d-value rows between (B, S, n*d) and (B, n, S, d) (inverse: back), rotating by +theta
// (inverse: -theta) when `rotate`. cos, sin: (B, S, d/2). Grid: ceil(B*S*n*d / BLOCK).
template <typename T>
__device__ void heads(const T *x, const T *cos, const T *sin, T *y, int b, int s, int n, int d,
                      int rotate, int inverse) {
  typedef typename Compute<T>::type C;
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const size_t total = (size_t)b * s * n * d;
  if (e >= total) return;
  const size_t row = e / d;  // row of the output layout
  const int i = (int)(e % d);
  const size_t bi = row / ((size_t)s * n), rest = row % ((size_t)s * n);
  size_t si, src;
  if (inverse) {
    si = rest / n;
    const size_t hi = rest % n;
    src = ((bi * n + hi) * s + si) * d;
  } else {
    const size_t hi = rest / s;
    si = rest % s;
    src = ((bi * s + si) * n + hi) * d;
  }
  if (!rotate) {
    y[e] = x[src + i];
    return;
  }
  const int half = d / 2;
  const int k = i < half ? i : i - half;
  const size_t t = (bi * s + si) * half + k;
  const C c = to_c(cos[t]);
  const C sn = inverse ? -to_c(sin[t]) : to_c(sin[t]);
  const C x1 = to_c(x[src + k]), x2 = to_c(x[src + k + half]);
  y[e] = from_c<T>(i < half ? x1 * c - x2 * sn : x2 * c + x1 * sn);
}

// ---- scaled, masked softmax --------------------------------------------------------------------

// y = softmax(scale*x + mask) per row of k scores; scores (B, G, R, k), mask (B, 1, S, k), score
// row r uses mask row r mod S. Grid: B*G*R rows.
template <typename T>
__device__ void masked_softmax(const T *x, const T *m, T *y, int g, int r, int s, int k,
                               double scale) {
  typedef typename Compute<T>::type C;
  const size_t row = blockIdx.x;
  const size_t bi = row / ((size_t)g * r), ri = row % r;
  const T *mrow = m + (bi * s + ri % s) * k;
  x += row * k;
  y += row * k;
  const C sc = (C)scale;
  C mx = (C)-INFINITY;
  for (int j = threadIdx.x; j < k; j += blockDim.x) mx = fmax(mx, to_c(x[j]) * sc + to_c(mrow[j]));
  mx = block_max(mx);
  C sum = 0;
  for (int j = threadIdx.x; j < k; j += blockDim.x) sum += exp(to_c(x[j]) * sc + to_c(mrow[j]) - mx);
  sum = block_sum(sum);
  const C inv = (C)1 / sum;
  for (int j = threadIdx.x; j < k; j += blockDim.x)
    y[j] = from_c<T>(exp(to_c(x[j]) * sc + to_c(mrow[j]) - mx) * inv);
}

// Backward: out = scale * y * (g - sum(g*y)) per row of k. Grid: rows.
template <typename T> __device__ void softmax_bwd(const T *y, const T *g, T *out, int k, double scale) {
  typedef typename Compute<T>::type C;
  const size_t row = blockIdx.x;
  y += row * k;
  g += row * k;
  out += row * k;
  C dot = 0;
  for (int j = threadIdx.x; j < k; j += blockDim.x) dot += to_c(y[j]) * to_c(g[j]);
  dot = block_sum(dot);
  const C sc = (C)scale;
  for (int j = threadIdx.x; j < k; j += blockDim.x)
    out[j] = from_c<T>(sc * to_c(y[j]) * (to_c(g[j]) - dot));
}

// ---- SwiGLU ------------------------------------------------------------------------------------

template <typename C> __device__ __forceinline__ C sigmoid(C x) { return (C)1 / ((C)1 + exp(-x)); }

// y = a * sigmoid(a) * u. Grid: ceil(n / BLOCK).
template <typename T> __device__ void swiglu(const T *a, const T *u, T *y, size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const auto av = to_c(a[i]);
  y[i] = from_c<T>(av * sigmoid(av) * to_c(u[i]));
}

// Backward: out[i] = g*u*s*(1 + a*(1 - s)), out[n + i] = g*a*s with s = sigmoid(a).
template <typename T> __device__ void swiglu_bwd(const T *a, const T *u, const T *g, T *out, size_t n) {
  typedef typename Compute<T>::type C;
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const C av = to_c(a[i]), uv = to_c(u[i]), gv = to_c(g[i]);
  const C s = sigmoid(av);
  out[i] = from_c<T>(gv * uv * s * ((C)1 + av * ((C)1 - s)));
  out[n + i] = from_c<T>(gv * av * s);
}

// ---- log-softmax + gather + entropy ------------------------------------------------------------

// out[2i] = log p(t_i), out[2i+1] = entropy of row i of z (N, V); sums in f64. Grid: N rows.
template <typename T>
__device__ void log_prob_entropy(const T *z, const uint32_t *targets, T *out, int v) {
  const size_t row = blockIdx.x;
  z += row * v;
  double mx = -INFINITY;
  for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmax(mx, (double)to_c(z[j]));
  mx = block_max(mx);
  double sum = 0.0, wsum = 0.0;
  for (int j = threadIdx.x; j < v; j += blockDim.x) {
    const double d = (double)to_c(z[j]) - mx;
    const double e = exp(d);
    sum += e;
    wsum += e * d;
  }
  sum = block_sum(sum);
  wsum = block_sum(wsum);
  if (threadIdx.x == 0) {
    const double log_sum = log(sum);
    out[2 * row] = from_c<T>((double)to_c(z[targets[row]]) - mx - log_sum);
    out[2 * row + 1] = from_c<T>(log_sum - wsum / sum);
  }
}

// Backward: out = g_lp*(1[v = t] - p) - g_H*p*(log p + H) per row, with log p = z - (z_t - lp).
template <typename T>
__device__ void log_prob_entropy_bwd(const T *z, const uint32_t *targets, const T *res, const T *g,
                                     T *out, int v) {
  typedef typename Compute<T>::type C;
  const size_t row = blockIdx.x;
  z += row * v;
  out += row * v;
  const int t = (int)targets[row];
  const C lp = to_c(res[2 * row]), h = to_c(res[2 * row + 1]);
  const C g_lp = to_c(g[2 * row]), g_h = to_c(g[2 * row + 1]);
  const C lse = to_c(z[t]) - lp;
  for (int j = threadIdx.x; j < v; j += blockDim.x) {
    const C logp = to_c(z[j]) - lse;
    const C p = exp(logp);
    C o = -g_lp * p - g_h * p * (logp + h);
    if (j == t) o += g_lp;
    out[j] = from_c<T>(o);
  }
}

// ---- extern "C" entry points, one per element type ---------------------------------------------

#define RL_OPS(T, S)                                                                               \
  extern "C" __global__ void rl_rms_norm_##S(const T *x, const T *w, T *y, int h, double eps) {   \
    rms_norm(x, w, y, h, eps);                                                                     \
  }                                                                                                \
  extern "C" __global__ void rl_rms_norm_bwd_rows_##S(const T *x, const T *w, const T *g, T *out, \
                                                      double *scale, int h, double eps) {          \
    rms_norm_bwd_rows(x, w, g, out, scale, h, eps);                                                \
  }                                                                                                \
  extern "C" __global__ void rl_rms_norm_bwd_weight_##S(const T *x, const T *g,                   \
                                                        const double *scale, T *out, int n,       \
                                                        int h) {                                   \
    rms_norm_bwd_weight(x, g, scale, out, n, h);                                                   \
  }                                                                                                \
  extern "C" __global__ void rl_heads_##S(const T *x, const T *cos, const T *sin, T *y, int b,    \
                                          int s, int n, int d, int rotate, int inverse) {          \
    heads(x, cos, sin, y, b, s, n, d, rotate, inverse);                                            \
  }                                                                                                \
  extern "C" __global__ void rl_masked_softmax_##S(const T *x, const T *m, T *y, int g, int r,    \
                                                   int s, int k, double scale) {                   \
    masked_softmax(x, m, y, g, r, s, k, scale);                                                    \
  }                                                                                                \
  extern "C" __global__ void rl_softmax_bwd_##S(const T *y, const T *g, T *out, int k,            \
                                                double scale) {                                    \
    softmax_bwd(y, g, out, k, scale);                                                              \
  }                                                                                                \
  extern "C" __global__ void rl_swiglu_##S(const T *a, const T *u, T *y, size_t n) {              \
    swiglu(a, u, y, n);                                                                            \
  }                                                                                                \
  extern "C" __global__ void rl_swiglu_bwd_##S(const T *a, const T *u, const T *g, T *out,        \
                                               size_t n) {                                         \
    swiglu_bwd(a, u, g, out, n);                                                                   \
  }                                                                                                \
  extern "C" __global__ void rl_log_prob_entropy_##S(const T *z, const uint32_t *targets, T *out, \
                                                     int v) {                                      \
    log_prob_entropy(z, targets, out, v);                                                          \
  }                                                                                                \
  extern "C" __global__ void rl_log_prob_entropy_bwd_##S(const T *z, const uint32_t *targets,     \
                                                         const T *res, const T *g, T *out,        \
                                                         int v) {                                  \
    log_prob_entropy_bwd(z, targets, res, g, out, v);                                              \
  }

RL_OPS(float, f32)
RL_OPS(double, f64)
RL_OPS(__nv_bfloat16, bf16)
RL_OPS(__half, f16)
