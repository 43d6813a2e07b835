// CUDA kernels of lognormal_noise / lognormal_noise_backward (spec: fastbayes/reference/lognormal.py), torch-free;
// csrc/cuda/lognormal_ops.cpp does the tensor glue.
//
// x is [R, C, S].  A small kernel computes the per-unit sampler constants once (float64, fastbayes/lognormal.h);
// "batch"/"sample" then draw θ (and, backward, its gradient factors) into a [rows, C] table, so the pass over x
// is a multiply; "element" draws per element inside the pass.  The backward writes dx and reduces the per-unit
// sums in double: blocks write fixed partial sums ([chunks, C] or [chunks, C·S]) that a second kernel adds in a
// fixed order, so the result is deterministic (no atomics) and independent of the device's SM count.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "fastbayes/lognormal.h"

namespace fastbayes {
namespace cuda_lognormal {
namespace {

enum Dtype { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };  // launchers.h FbDtype

// Element storage <-> math type; explicit intrinsics (torch builds with __CUDA_NO_HALF_CONVERSIONS__ etc.).
template <typename X>
struct Elem;
template <>
struct Elem<float> {
  using T = float;
  static __device__ __forceinline__ float ld(float v) { return v; }
  static __device__ __forceinline__ float st(float v) { return v; }
};
template <>
struct Elem<double> {
  using T = double;
  static __device__ __forceinline__ double ld(double v) { return v; }
  static __device__ __forceinline__ double st(double v) { return v; }
};
template <>
struct Elem<__half> {
  using T = float;
  static __device__ __forceinline__ float ld(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half st(float v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  using T = float;
  static __device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 st(float v) { return __float2bfloat16_rn(v); }
};

// Parameters (μ, log σ, and the returned gradients) in their own dtype <-> double; stores round via float like
// Tensor.to(dtype) from float64.
template <typename M>
__device__ __forceinline__ double ldp(M v) {
  return static_cast<double>(Elem<M>::ld(v));
}
template <typename M>
__device__ __forceinline__ M stp(double v) {
  if constexpr (sizeof(M) == sizeof(double)) {
    return v;
  } else {
    return Elem<M>::st(static_cast<float>(v));
  }
}

template <typename T>
struct UnitDev {
  LognormalUnit<T> p;
  int keep;
};

// n / d for 32-bit n < 2^31 by a multiply-high (PyTorch's IntDivider), instead of a ~20-instruction division.
struct Div32 {
  uint32_t d, m, s;
  __host__ explicit Div32(uint32_t divisor) : d(divisor) {
    s = 0;
    while (s < 32 && (uint64_t{1} << s) < divisor) ++s;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - divisor)) / divisor + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

constexpr int kThreads = 256;
constexpr int kMaxGrid = 65535 * 16;
constexpr int kSpatialMinS = 32;        // S >= this: one block column per unit; below: tiles of 32 columns
constexpr int64_t kTargetBlocks = 1024;  // backward partition target (fixed: results do not depend on the GPU)

unsigned int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < kMaxGrid ? (blocks > 0 ? blocks : 1) : kMaxGrid);
}

// ------------------------------------------------------------------------------------------------------------
// Per-unit prologue and the θ tables.

template <typename M, typename T>
__global__ void unit_kernel(const M* __restrict__ mu, const M* __restrict__ log_sigma, const bool* __restrict__ mask,
                            double a, double b, int64_t C, UnitDev<T>* __restrict__ out) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    UnitDev<T> u;
    u.p = lognormal_unit<T>(ldp(mu[c]), ldp(log_sigma[c]), a, b);
    u.keep = mask == nullptr || mask[c];
    out[c] = u;
  }
}

// θ per (table row, unit) with counter offset + row·C + c ("batch": 1 row, "sample": N rows); for the backward
// also fm = θ·∂x_s/∂μ and fs = θ·σ·∂x_s/∂σ.  Masked units get 0.
template <typename T, bool kBackward>
__global__ void table_kernel(const UnitDev<T>* __restrict__ U, int64_t C, int64_t n, uint64_t seed, uint64_t offset,
                             T a, T b, T* __restrict__ th, T* __restrict__ fm, T* __restrict__ fs) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const UnitDev<T> u = U[i % C];
    T t = 0, m = 0, s = 0;
    if (u.keep) {
      const LognormalDraw<T> d = lognormal_draw<T>(philox_uniform(seed, offset + static_cast<uint64_t>(i)), u.p, a, b);
      t = d.theta;
      if (kBackward) {
        const LognormalGrad<T> gr = lognormal_grad<T>(d, u.p);
        m = t * gr.dmu;
        s = t * gr.dsig * u.p.sigma;
      }
    }
    th[i] = t;
    if (kBackward) {
      fm[i] = m;
      fs[i] = s;
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Forward: one thread per element, grid-stride.  32-bit index math when numel < 2^31.

struct FwdShape {
  int64_t n, C, S, P;
  bool per_sample;
  uint64_t seed, offset;
};

template <typename X, bool kTable, bool k32>
__global__ void forward_kernel(const X* __restrict__ x, X* __restrict__ y, const UnitDev<typename Elem<X>::T>* U,
                               const typename Elem<X>::T* __restrict__ tab, FwdShape sh, Div32 dS, Div32 dC,
                               Div32 dP, typename Elem<X>::T a, typename Elem<X>::T b) {
  using T = typename Elem<X>::T;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < sh.n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t q, row, c;
    if (k32) {
      const uint32_t q32 = dS.div(static_cast<uint32_t>(e));
      const uint32_t r32 = dC.div(q32);
      q = q32;
      row = r32;
      c = q32 - r32 * static_cast<uint32_t>(sh.C);
    } else {
      q = e / sh.S;
      row = q / sh.C;
      c = q - row * sh.C;
    }
    T t;
    if (kTable) {
      const int64_t n_ex = sh.per_sample ? (k32 ? static_cast<int64_t>(dP.div(static_cast<uint32_t>(row))) : row / sh.P)
                                         : 0;
      t = tab[n_ex * sh.C + c];
    } else {
      const UnitDev<T> u = U[c];
      t = u.keep ? lognormal_draw<T>(philox_uniform(sh.seed, sh.offset + static_cast<uint64_t>(e)), u.p, a, b).theta
                 : T(0);
    }
    y[e] = Elem<X>::st(Elem<X>::ld(x[e]) * t);
  }
}

// ------------------------------------------------------------------------------------------------------------
// Backward.

// Sum over the block in a fixed order (shuffle tree per warp, then warp 0 over the warp sums).
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double sa[32], sb[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < nw ? sa[lane] : 0.0;
    b = lane < nw ? sb[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, o);
      b += __shfl_down_sync(0xffffffffu, b, o);
    }
  }
}

struct BwdShape {
  int64_t R, C, S, P, rows_per_chunk;  // R, C, S < 2^31 (checked by the glue)
  bool per_sample;
  uint64_t seed, offset;
};

// Per element: dx = g·θ, and the two gradient terms (g·x·θ·∂x_s/∂μ, g·x·θ·σ·∂x_s/∂σ) added to (sm, ss).
template <typename X, typename G, bool kTable>
__device__ __forceinline__ void backward_element(const G* __restrict__ g, const X* __restrict__ x,
                                                 X* __restrict__ dx, int64_t e, const UnitDev<typename Elem<X>::T>& u,
                                                 int64_t ti, const typename Elem<X>::T* __restrict__ th,
                                                 const typename Elem<X>::T* __restrict__ fm,
                                                 const typename Elem<X>::T* __restrict__ fs, const BwdShape& sh,
                                                 typename Elem<X>::T a, typename Elem<X>::T b, double& sm,
                                                 double& ss) {
  using T = typename Elem<X>::T;
  const T gv = Elem<G>::ld(g[e]);
  if (kTable) {
    const T gx = gv * Elem<X>::ld(x[e]);
    dx[e] = Elem<X>::st(gv * th[ti]);
    sm += static_cast<double>(gx) * static_cast<double>(fm[ti]);
    ss += static_cast<double>(gx) * static_cast<double>(fs[ti]);
  } else {
    const LognormalDraw<T> d =
        lognormal_draw<T>(philox_uniform(sh.seed, sh.offset + static_cast<uint64_t>(e)), u.p, a, b);
    const LognormalGrad<T> gr = lognormal_grad<T>(d, u.p);
    const T gxt = gv * Elem<X>::ld(x[e]) * d.theta;
    dx[e] = Elem<X>::st(gv * d.theta);
    sm += static_cast<double>(gxt * gr.dmu);
    ss += static_cast<double>(gxt * gr.dsig * u.p.sigma);
  }
}

// S >= kSpatialMinS: block (c, chunk) walks rows [r0, r1) × s of unit c (flattened, coalesced along s) and
// writes part[chunk][0 / 1][c].
template <typename X, typename G, bool kTable>
__global__ void backward_spatial_kernel(const G* __restrict__ g, const X* __restrict__ x, X* __restrict__ dx,
                                        const UnitDev<typename Elem<X>::T>* __restrict__ U,
                                        const typename Elem<X>::T* __restrict__ th,
                                        const typename Elem<X>::T* __restrict__ fm,
                                        const typename Elem<X>::T* __restrict__ fs, BwdShape sh, Div32 dS, Div32 dP,
                                        typename Elem<X>::T a, typename Elem<X>::T b, double* __restrict__ part) {
  using T = typename Elem<X>::T;
  const int64_t c = blockIdx.x, chunk = blockIdx.y;
  const int64_t r0 = chunk * sh.rows_per_chunk;
  const int64_t r1 = r0 + sh.rows_per_chunk < sh.R ? r0 + sh.rows_per_chunk : sh.R;
  const uint32_t n = static_cast<uint32_t>((r1 - r0) * sh.S);  // < 2^31 by the host's plan
  const UnitDev<T> u = U[c];
  double sm = 0.0, ss = 0.0;
  for (uint32_t t = threadIdx.x; t < n; t += blockDim.x) {
    const uint32_t dr = dS.div(t);
    const int64_t row = r0 + dr;
    const int64_t e = (row * sh.C + c) * sh.S + (t - dr * static_cast<uint32_t>(sh.S));
    if (!u.keep) {
      dx[e] = Elem<X>::st(T(0));
      continue;
    }
    const int64_t ti = (sh.per_sample ? static_cast<int64_t>(dP.div(static_cast<uint32_t>(row))) * sh.C : 0) + c;
    backward_element<X, G, kTable>(g, x, dx, e, u, ti, th, fm, fs, sh, a, b, sm, ss);
  }
  block_sum2(sm, ss);
  if (threadIdx.x == 0) {
    part[(chunk * 2) * sh.C + c] = sm;
    part[(chunk * 2 + 1) * sh.C + c] = ss;
  }
}

// S < kSpatialMinS (S == 1 for [B, T, C] or [B, C]): block (tile, chunk) of 32 columns j = c·S + s × 8 row lanes,
// rows [r0, r1); writes part[chunk][0 / 1][j] over the C·S columns.
template <typename X, typename G, bool kTable>
__global__ void backward_columns_kernel(const G* __restrict__ g, const X* __restrict__ x, X* __restrict__ dx,
                                        const UnitDev<typename Elem<X>::T>* __restrict__ U,
                                        const typename Elem<X>::T* __restrict__ th,
                                        const typename Elem<X>::T* __restrict__ fm,
                                        const typename Elem<X>::T* __restrict__ fs, BwdShape sh, Div32 dP,
                                        typename Elem<X>::T a, typename Elem<X>::T b, double* __restrict__ part) {
  using T = typename Elem<X>::T;
  __shared__ double sm_s[8][33], ss_s[8][33];
  const int64_t CS = sh.C * sh.S;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * sh.rows_per_chunk;
  const int64_t r1 = r0 + sh.rows_per_chunk < sh.R ? r0 + sh.rows_per_chunk : sh.R;
  double sm = 0.0, ss = 0.0;
  if (j < CS) {
    const int64_t c = j / sh.S;
    const UnitDev<T> u = U[c];
    for (int64_t row = r0 + threadIdx.y; row < r1; row += blockDim.y) {
      const int64_t e = row * CS + j;
      if (!u.keep) {
        dx[e] = Elem<X>::st(T(0));
        continue;
      }
      const int64_t ti = (sh.per_sample ? static_cast<int64_t>(dP.div(static_cast<uint32_t>(row))) * sh.C : 0) + c;
      backward_element<X, G, kTable>(g, x, dx, e, u, ti, th, fm, fs, sh, a, b, sm, ss);
    }
  }
  sm_s[threadIdx.y][threadIdx.x] = sm;
  ss_s[threadIdx.y][threadIdx.x] = ss;
  __syncthreads();
  if (threadIdx.y == 0 && j < CS) {
    double tm = 0.0, ts = 0.0;
    for (int k = 0; k < static_cast<int>(blockDim.y); ++k) {
      tm += sm_s[k][threadIdx.x];
      ts += ss_s[k][threadIdx.x];
    }
    part[(chunk * 2) * CS + j] = tm;
    part[(chunk * 2 + 1) * CS + j] = ts;
  }
}

// Stage 2: per unit, Σ over chunks (outer) and the unit's `width` columns (inner) in a fixed order.
template <typename M>
__global__ void finalize_kernel(const double* __restrict__ part, int64_t chunks, int64_t cols, int64_t width,
                                int64_t C, const bool* __restrict__ mask, M* __restrict__ dmu, M* __restrict__ dls) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double tm = 0.0, ts = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      const double* pm = part + (k * 2) * cols + c * width;
      const double* ps = part + (k * 2 + 1) * cols + c * width;
      for (int64_t s = 0; s < width; ++s) {
        tm += pm[s];
        ts += ps[s];
      }
    }
    if (mask != nullptr && !mask[c]) tm = ts = 0.0;
    dmu[c] = stp<M>(tm);
    dls[c] = stp<M>(ts);
  }
}

// ------------------------------------------------------------------------------------------------------------
// Host-side plan: workspace layout and backward partition, a function of the shape only.

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

struct Plan {
  bool table, spatial;
  int64_t tab_rows, chunks, rows_per_chunk, part_cols, part_width;
  size_t units_off, tab_off, part_off, bytes;
};

Plan make_plan(int x_dtype, int64_t R, int64_t P, int64_t C, int64_t S, int gran, bool backward) {
  const size_t tsize = x_dtype == kF64 ? sizeof(double) : sizeof(float);
  const size_t usize = x_dtype == kF64 ? sizeof(UnitDev<double>) : sizeof(UnitDev<float>);
  Plan p{};
  p.table = gran != static_cast<int>(Granularity::kElement);
  p.tab_rows = !p.table ? 0 : (gran == static_cast<int>(Granularity::kSample) ? R / P : 1);
  p.units_off = 0;
  p.tab_off = align_up(usize * static_cast<size_t>(C));
  p.part_off = p.tab_off + align_up(tsize * static_cast<size_t>(p.tab_rows * C) * (backward ? 3 : 1));
  p.bytes = p.part_off;
  if (!backward || R == 0 || C == 0 || S == 0) return p;
  p.spatial = S >= kSpatialMinS;
  const int64_t cols_blocks = p.spatial ? C : (C * S + 31) / 32;
  int64_t chunks = (kTargetBlocks + cols_blocks - 1) / cols_blocks;
  // at least ~2048 elements per block, and a chunk's element count must fit the kernels' 32-bit counters
  const int64_t per_block_cols = p.spatial ? S : 32;
  const int64_t max_chunks = (R * per_block_cols + 2047) / 2048;
  chunks = chunks < max_chunks ? chunks : max_chunks;
  chunks = chunks < 1 ? 1 : (chunks > R ? R : chunks);
  if (chunks > 65535) chunks = 65535;
  int64_t rpc = (R + chunks - 1) / chunks;
  while (p.spatial && rpc > 1 && rpc * S >= (int64_t{1} << 31)) rpc = (rpc + 1) / 2;
  p.rows_per_chunk = rpc;
  p.chunks = (R + rpc - 1) / rpc;
  p.part_cols = p.spatial ? C : C * S;
  p.part_width = p.spatial ? 1 : S;
  p.bytes = p.part_off + sizeof(double) * static_cast<size_t>(p.chunks * 2 * p.part_cols);
  return p;
}

template <typename M, typename T>
void launch_units(const void* mu, const void* log_sigma, const bool* mask, double a, double b, int64_t C,
                  UnitDev<T>* units, cudaStream_t stream) {
  unit_kernel<M, T><<<grid_for(C), kThreads, 0, stream>>>(static_cast<const M*>(mu), static_cast<const M*>(log_sigma),
                                                          mask, a, b, C, units);
}

template <typename T>
cudaError_t units_for(int p_dtype, const void* mu, const void* log_sigma, const bool* mask, double a, double b,
                      int64_t C, UnitDev<T>* units, cudaStream_t stream) {
  switch (p_dtype) {
    case kF32: launch_units<float, T>(mu, log_sigma, mask, a, b, C, units, stream); break;
    case kF64: launch_units<double, T>(mu, log_sigma, mask, a, b, C, units, stream); break;
    case kF16: launch_units<__half, T>(mu, log_sigma, mask, a, b, C, units, stream); break;
    case kBF16: launch_units<__nv_bfloat16, T>(mu, log_sigma, mask, a, b, C, units, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename X>
cudaError_t forward_typed(const void* xv, void* yv, int p_dtype, const void* mu, const void* log_sigma,
                          const bool* mask, double a, double b, int64_t R, int64_t P, int64_t C, int64_t S, int gran,
                          uint64_t seed, uint64_t offset, void* workspace, cudaStream_t stream) {
  using T = typename Elem<X>::T;
  const Plan plan = make_plan(sizeof(X) == 8 ? kF64 : kF32, R, P, C, S, gran, false);
  char* ws = static_cast<char*>(workspace);
  UnitDev<T>* units = reinterpret_cast<UnitDev<T>*>(ws + plan.units_off);
  T* tab = reinterpret_cast<T*>(ws + plan.tab_off);
  cudaError_t err = units_for<T>(p_dtype, mu, log_sigma, mask, a, b, C, units, stream);
  if (err != cudaSuccess) return err;
  const T ta = static_cast<T>(a), tb = static_cast<T>(b);
  if (plan.table) {
    const int64_t n = plan.tab_rows * C;
    table_kernel<T, false><<<grid_for(n), kThreads, 0, stream>>>(units, C, n, seed, offset, ta, tb, tab, nullptr,
                                                                 nullptr);
  }
  const X* x = static_cast<const X*>(xv);
  X* y = static_cast<X*>(yv);
  const int64_t n = R * C * S;
  const FwdShape sh{n, C, S, P, gran == static_cast<int>(Granularity::kSample), seed, offset};
  const bool k32 = n < (int64_t{1} << 31);
  const Div32 dS(static_cast<uint32_t>(k32 ? S : 1)), dC(static_cast<uint32_t>(k32 ? C : 1)),
      dP(static_cast<uint32_t>(k32 ? P : 1));
  const unsigned int grid = grid_for(n);
  if (plan.table) {
    if (k32) {
      forward_kernel<X, true, true><<<grid, kThreads, 0, stream>>>(x, y, units, tab, sh, dS, dC, dP, ta, tb);
    } else {
      forward_kernel<X, true, false><<<grid, kThreads, 0, stream>>>(x, y, units, tab, sh, dS, dC, dP, ta, tb);
    }
  } else {
    if (k32) {
      forward_kernel<X, false, true><<<grid, kThreads, 0, stream>>>(x, y, units, tab, sh, dS, dC, dP, ta, tb);
    } else {
      forward_kernel<X, false, false><<<grid, kThreads, 0, stream>>>(x, y, units, tab, sh, dS, dC, dP, ta, tb);
    }
  }
  return cudaGetLastError();
}

template <typename X, typename G, bool kTable>
void launch_backward(const Plan& plan, const G* g, const X* x, X* dx, const UnitDev<typename Elem<X>::T>* units,
                     const typename Elem<X>::T* th, const typename Elem<X>::T* fm, const typename Elem<X>::T* fs,
                     const BwdShape& sh, typename Elem<X>::T a, typename Elem<X>::T b, double* part,
                     cudaStream_t stream) {
  if (plan.spatial) {
    const dim3 grid(static_cast<unsigned int>(sh.C), static_cast<unsigned int>(plan.chunks));
    backward_spatial_kernel<X, G, kTable><<<grid, kThreads, 0, stream>>>(
        g, x, dx, units, th, fm, fs, sh, Div32(static_cast<uint32_t>(sh.S)), Div32(static_cast<uint32_t>(sh.P)), a, b,
        part);
  } else {
    const dim3 grid(static_cast<unsigned int>((sh.C * sh.S + 31) / 32), static_cast<unsigned int>(plan.chunks));
    backward_columns_kernel<X, G, kTable><<<grid, dim3(32, 8), 0, stream>>>(
        g, x, dx, units, th, fm, fs, sh, Div32(static_cast<uint32_t>(sh.P)), a, b, part);
  }
}

template <typename M>
void launch_finalize(const Plan& plan, const double* part, int64_t C, const bool* mask, void* dmu, void* dls,
                     cudaStream_t stream) {
  finalize_kernel<M><<<grid_for(C), kThreads, 0, stream>>>(part, plan.chunks, plan.part_cols, plan.part_width, C,
                                                           mask, static_cast<M*>(dmu), static_cast<M*>(dls));
}

template <typename X, typename G>
cudaError_t backward_typed(const void* gv, const void* xv, void* dxv, int p_dtype, const void* mu,
                           const void* log_sigma, const bool* mask, void* dmu, void* dls, double a, double b,
                           int64_t R, int64_t P, int64_t C, int64_t S, int gran, uint64_t seed, uint64_t offset,
                           void* workspace, cudaStream_t stream) {
  using T = typename Elem<X>::T;
  const Plan plan = make_plan(sizeof(X) == 8 ? kF64 : kF32, R, P, C, S, gran, true);
  char* ws = static_cast<char*>(workspace);
  UnitDev<T>* units = reinterpret_cast<UnitDev<T>*>(ws + plan.units_off);
  T* th = reinterpret_cast<T*>(ws + plan.tab_off);
  T* fm = th + plan.tab_rows * C;
  T* fs = fm + plan.tab_rows * C;
  double* part = reinterpret_cast<double*>(ws + plan.part_off);
  cudaError_t err = units_for<T>(p_dtype, mu, log_sigma, mask, a, b, C, units, stream);
  if (err != cudaSuccess) return err;
  const T ta = static_cast<T>(a), tb = static_cast<T>(b);
  if (R * C * S > 0) {
    if (plan.table) {
      const int64_t n = plan.tab_rows * C;
      table_kernel<T, true><<<grid_for(n), kThreads, 0, stream>>>(units, C, n, seed, offset, ta, tb, th, fm, fs);
    }
    const BwdShape sh{R, C, S, P, plan.rows_per_chunk, gran == static_cast<int>(Granularity::kSample), seed, offset};
    const G* g = static_cast<const G*>(gv);
    const X* x = static_cast<const X*>(xv);
    X* dx = static_cast<X*>(dxv);
    if (plan.table) {
      launch_backward<X, G, true>(plan, g, x, dx, units, th, fm, fs, sh, ta, tb, part, stream);
    } else {
      launch_backward<X, G, false>(plan, g, x, dx, units, th, fm, fs, sh, ta, tb, part, stream);
    }
  } else if (C > 0) {
    // no elements: every sum is 0
    err = cudaMemsetAsync(part, 0, sizeof(double) * 2 * static_cast<size_t>(C), stream);
    if (err != cudaSuccess) return err;
  }
  Plan fin = plan;
  if (R * C * S == 0) {
    fin.chunks = 1;
    fin.part_cols = C;
    fin.part_width = 1;
  }
  switch (p_dtype) {
    case kF32: launch_finalize<float>(fin, part, C, mask, dmu, dls, stream); break;
    case kF64: launch_finalize<double>(fin, part, C, mask, dmu, dls, stream); break;
    case kF16: launch_finalize<__half>(fin, part, C, mask, dmu, dls, stream); break;
    case kBF16: launch_finalize<__nv_bfloat16>(fin, part, C, mask, dmu, dls, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace cuda_lognormal
}  // namespace fastbayes

using namespace fastbayes::cuda_lognormal;

extern "C" size_t fb_lognormal_workspace_bytes(int x_dtype, int64_t R, int64_t P, int64_t C, int64_t S, int gran,
                                               int backward) {
  const fastbayes::cuda_lognormal::Plan p = make_plan(x_dtype, R, P, C, S, gran, backward != 0);
  // the empty-input backward still writes 2·C zero partials
  const size_t empty_part = backward ? p.part_off + sizeof(double) * 2 * static_cast<size_t>(C) : 0;
  return p.bytes > empty_part ? p.bytes : empty_part;
}

extern "C" cudaError_t fb_lognormal_noise_cuda(int x_dtype, const void* x, void* y, int p_dtype, const void* mu,
                                               const void* log_sigma, const bool* mask, double a, double b,
                                               int64_t R, int64_t P, int64_t C, int64_t S, int gran, uint64_t seed,
                                               uint64_t offset, void* workspace, cudaStream_t stream) {
  if (R * C * S == 0) return cudaSuccess;
  switch (x_dtype) {
    case kF32:
      return forward_typed<float>(x, y, p_dtype, mu, log_sigma, mask, a, b, R, P, C, S, gran, seed, offset, workspace,
                                  stream);
    case kF64:
      return forward_typed<double>(x, y, p_dtype, mu, log_sigma, mask, a, b, R, P, C, S, gran, seed, offset,
                                   workspace, stream);
    case kF16:
      return forward_typed<__half>(x, y, p_dtype, mu, log_sigma, mask, a, b, R, P, C, S, gran, seed, offset,
                                   workspace, stream);
    case kBF16:
      return forward_typed<__nv_bfloat16>(x, y, p_dtype, mu, log_sigma, mask, a, b, R, P, C, S, gran, seed, offset,
                                          workspace, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t fb_lognormal_noise_backward_cuda(int x_dtype, int g_dtype, const void* grad_y, const void* x,
                                                        void* dx, int p_dtype, const void* mu, const void* log_sigma,
                                                        const bool* mask, void* dmu, void* dlog_sigma, double a,
                                                        double b, int64_t R, int64_t P, int64_t C, int64_t S,
                                                        int gran, uint64_t seed, uint64_t offset, void* workspace,
                                                        cudaStream_t stream) {
#define FB_LN_BWD(X, G)                                                                                              \
  return backward_typed<X, G>(grad_y, x, dx, p_dtype, mu, log_sigma, mask, dmu, dlog_sigma, a, b, R, P, C, S, gran, \
                              seed, offset, workspace, stream)
  const bool same = g_dtype == x_dtype;
  switch (x_dtype) {
    case kF32:
      if (g_dtype != kF32) return cudaErrorInvalidValue;
      FB_LN_BWD(float, float);
    case kF64:
      if (g_dtype != kF64) return cudaErrorInvalidValue;
      FB_LN_BWD(double, double);
    case kF16:
      if (same) FB_LN_BWD(__half, __half);
      if (g_dtype != kF32) return cudaErrorInvalidValue;
      FB_LN_BWD(__half, float);
    case kBF16:
      if (same) FB_LN_BWD(__nv_bfloat16, __nv_bfloat16);
      if (g_dtype != kF32) return cudaErrorInvalidValue;
      FB_LN_BWD(__nv_bfloat16, float);
    default: return cudaErrorInvalidValue;
  }
#undef FB_LN_BWD
}
