// CUDA kernels of lognormal_noise / lognormal_noise_backward (spec: fastbayes/reference/lognormal.py), torch-free;
// csrc/cuda/lognormal_ops.cpp does the tensor glue.
//
// x is [R, C, S] with R = N·P rows.  Per call:
// * unit_kernel: the per-unit sampler constants (float64 prologue, fastbayes/lognormal.h) into a [C] table, and for
//   "batch" the C draws θ_c (backward: also θ·∂x_s/∂μ and θ·σ·∂x_s/∂σ) in the same pass.
// * table_kernel, only for "sample" with P·S > 1: the N·C draws θ_{n,c} (and factors), shared by P·S elements each.
// * Draws that cover x one to one ("element", "sample" on [B, C], "batch" on [1, C]) are drawn inline per element,
//   with the element index as counter (offset + n·C + c and offset + c coincide with it there): no θ table.
// The forward walks x in 16-byte vectors (V = 16 / sizeof(X) elements); each vector splits its first index into
// (row, unit, s) once and the lanes carry it on, and θ is reloaded (or the unit constants, for inline draws) only
// when the lane's unit changes.  The backward writes dx and reduces the per-unit sums in double: blocks write fixed
// partial sums ([chunks, C] or [chunks, C·S]) that finalize_kernel adds in a fixed order, so the result is
// deterministic (no atomics) and independent of the device's SM count.  grad_y of any dtype is read directly and
// rounded to the math dtype on load, as the reference's g.to(math dtype) (no conversion copy).
#include "dtype_io.cuh"
#include "fastbayes/lognormal.h"

namespace fastbayes {
namespace cuda_lognormal {
namespace {

using cuda::Div32;
using cuda::Elem;
using cuda::load_lanes;
using cuda::load_lanes_any;
using cuda::store_lanes;

// One unit's constants in the math type: 8 values, so a unit is two (float) or four (double) 16-byte loads.
template <typename T>
struct alignas(8 * sizeof(T)) UnitDev {
  LognormalUnit<T> p;
  T keep;  // 1, or 0 for a masked unit
};

constexpr int kThreads = 256;
constexpr int kUnitThreads = 128;  // float64 prologue: small blocks spread the typically few units over more SMs
constexpr int kMaxGrid = 65535 * 16;
constexpr int kSpatialMinS = 32;         // S >= this: one block column per unit; below: tiles of 32 vectors of columns
constexpr int64_t kTargetBlocks = 1024;  // backward partition target (fixed: results do not depend on the GPU)

template <typename X>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(X));
}

unsigned int grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < kMaxGrid ? (blocks > 0 ? blocks : 1) : kMaxGrid);
}

#define FB_LN_STRIDE(i, n)                                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// θ, and with kGrad fm = θ·∂x_s/∂μ and fs = θ·σ·∂x_s/∂σ, of one shared draw; 0 for a masked unit.
template <typename T, bool kGrad>
__device__ __forceinline__ void shared_draw(const UnitDev<T>& u, uint64_t seed, uint64_t counter, T a, T b, T* th,
                                            T* fm, T* fs, int64_t i) {
  T t = 0, m = 0, s = 0;
  if (u.keep != T(0)) {
    const LognormalDraw<T> d = lognormal_draw<T>(philox_uniform(seed, counter), u.p, a, b);
    t = d.theta;
    if (kGrad) {
      const LognormalGrad<T> gr = lognormal_grad<T>(d, u.p);
      m = t * gr.dmu;
      s = t * gr.dsig * u.p.sigma;
    }
  }
  th[i] = t;
  if (kGrad) {
    fm[i] = m;
    fs[i] = s;
  }
}

// ------------------------------------------------------------------------------------------------------------
// Per-unit prologue (+ the "batch" draws) and the "sample" table.

template <typename T, bool kGrad>
__global__ void __launch_bounds__(kUnitThreads)
    unit_kernel(const void* __restrict__ mu, const void* __restrict__ log_sigma, int p_dtype,
                const bool* __restrict__ mask, double a, double b, int64_t C, int batch_draws, uint64_t seed,
                uint64_t offset, UnitDev<T>* __restrict__ U, T* __restrict__ th, T* __restrict__ fm,
                T* __restrict__ fs) {
  FB_LN_STRIDE(c, C) {
    UnitDev<T> u;
    u.p = lognormal_unit<T>(cuda::load_any(mu, p_dtype, c), cuda::load_any(log_sigma, p_dtype, c), a, b);
    u.keep = (mask == nullptr || mask[c]) ? T(1) : T(0);
    U[c] = u;
    if (batch_draws) {
      shared_draw<T, kGrad>(u, seed, offset + static_cast<uint64_t>(c), static_cast<T>(a), static_cast<T>(b), th,
                            fm, fs, c);
    }
  }
}

// "sample" with P·S > 1: θ_{n,c} at i = n·C + c, counter offset + i.
template <typename T, bool kGrad>
__global__ void table_kernel(const UnitDev<T>* __restrict__ U, int64_t C, int64_t n, uint64_t seed, uint64_t offset,
                             T a, T b, T* __restrict__ th, T* __restrict__ fm, T* __restrict__ fs) {
  FB_LN_STRIDE(i, n) { shared_draw<T, kGrad>(U[i % C], seed, offset + static_cast<uint64_t>(i), a, b, th, fm, fs, i); }
}

// ------------------------------------------------------------------------------------------------------------
// Forward: grid-stride over 16-byte vectors of x (the last one partial).

struct FwdArgs {
  int64_t n, C, S;
  uint64_t seed, offset;
  Div32 dS, dC, dP;  // dS, dC only when k32 (n < 2^31); dP always (rows < 2^31, checked by the glue)
  int per_sample;    // table mode: θ at (row / P)·C + c, else at c
  int vec;           // x and y 16-byte aligned
  int whole;         // S % V == 0: no vector straddles two (row, unit) segments
};

// kDraw: one draw per element (counter offset + e), one element per step (the sampler's few hundred instructions
// per element make this pass compute-bound, and unrolling the sampler over vector lanes only bloats the code);
// else θ from the table, 16-byte vectors.
template <typename X, bool kDraw, bool k32>
__global__ void forward_kernel(const X* __restrict__ x, X* __restrict__ y,
                               const UnitDev<typename Elem<X>::T>* __restrict__ U,
                               const typename Elem<X>::T* __restrict__ tab, FwdArgs A, typename Elem<X>::T a,
                               typename Elem<X>::T b) {
  using T = typename Elem<X>::T;
  constexpr int V = kDraw ? 1 : vec_width<X>();
  const int64_t nvec = (A.n + V - 1) / V;
  FB_LN_STRIDE(v, nvec) {
    const int64_t e0 = v * V;
    const int nvalid = A.n - e0 < V ? static_cast<int>(A.n - e0) : V;
    const bool vec = A.vec && nvalid == V;
    // (row, c, s) of the vector's first element; the lanes carry them on
    int64_t row, c, s;
    if (k32) {
      const uint32_t q = A.dS.div(static_cast<uint32_t>(e0));
      const uint32_t r = A.dC.div(q);
      s = static_cast<int64_t>(static_cast<uint32_t>(e0) - q * static_cast<uint32_t>(A.S));
      c = static_cast<int64_t>(q - r * static_cast<uint32_t>(A.C));
      row = r;
    } else {
      const int64_t q = e0 / A.S;
      row = q / A.C;
      s = e0 - q * A.S;
      c = q - row * A.C;
    }
    T xv[V], out[V];
    load_lanes<X, V>(x, e0, vec, nvalid, xv);
    if (kDraw || A.whole) {
      // S % V == 0: the vector lies in one (row, unit) segment (and is never partial)
      if (kDraw) {
        const UnitDev<T> u = U[c];
#pragma unroll
        for (int l = 0; l < V; ++l) {
          const T th = u.keep != T(0) ? lognormal_draw<T>(philox_uniform(A.seed, A.offset + static_cast<uint64_t>(e0 + l)),
                                                           u.p, a, b)
                                            .theta
                                      : T(0);
          out[l] = xv[l] * th;
        }
      } else {
        const T th = tab[(A.per_sample ? static_cast<int64_t>(A.dP.div(static_cast<uint32_t>(row))) * A.C : 0) + c];
#pragma unroll
        for (int l = 0; l < V; ++l) out[l] = xv[l] * th;
      }
    } else {
      T th = 0;
      UnitDev<T> u;
#pragma unroll
      for (int l = 0; l < V; ++l) {
        const bool fresh = l == 0 || s == 0;  // the lane starts a new (row, unit) segment
        if (kDraw) {
          if (fresh) u = U[c];
          th = T(0);
          if (l < nvalid && u.keep != T(0)) {
            th = lognormal_draw<T>(philox_uniform(A.seed, A.offset + static_cast<uint64_t>(e0 + l)), u.p, a, b).theta;
          }
        } else if (fresh && l < nvalid) {
          th = tab[(A.per_sample ? static_cast<int64_t>(A.dP.div(static_cast<uint32_t>(row))) * A.C : 0) + c];
        }
        out[l] = xv[l] * th;
        if (++s == A.S) {
          s = 0;
          if (++c == A.C) {
            c = 0;
            ++row;
          }
        }
      }
    }
    store_lanes<X, V>(y, e0, vec, nvalid, out);
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

struct BwdArgs {
  int64_t R, C, S, rows_per_chunk;  // R, C, S < 2^31 (checked by the glue)
  uint64_t seed, offset;
  Div32 dSV, dP;  // spatial: S / V per row; table rows: row / P
  int per_sample, vec, g_dtype;
};

// One element's backward: dx = g·θ, and its two terms (g·x·θ·∂x_s/∂μ, g·x·θ·σ·∂x_s/∂σ) added to (sm, ss).
// Inline draws take the unit constants and the counter; table draws their (θ, fm, fs).
template <typename T, bool kDraw>
__device__ __forceinline__ T backward_one(T gv, T xv, const UnitDev<T>& u, uint64_t seed, uint64_t counter, T th,
                                          T fm, T fs, T a, T b, double& sm, double& ss) {
  if (kDraw) {
    const LognormalDraw<T> d = lognormal_draw<T>(philox_uniform(seed, counter), u.p, a, b);
    const LognormalGrad<T> gr = lognormal_grad<T>(d, u.p);
    const T gxt = gv * xv * d.theta;
    sm += static_cast<double>(gxt * gr.dmu);
    ss += static_cast<double>(gxt * gr.dsig * u.p.sigma);
    return gv * d.theta;
  } else {
    const T gx = gv * xv;
    sm += static_cast<double>(gx) * static_cast<double>(fm);
    ss += static_cast<double>(gx) * static_cast<double>(fs);
    return gv * th;
  }
}

// S >= kSpatialMinS: block (c, chunk) walks rows [r0, r1) × the unit's S elements in vectors of V (V divides S;
// V = 1 when S is no multiple of the vector width or a pointer is misaligned) and writes part[chunk][0 / 1][c].
// The table's (θ, fm, fs) are reloaded only when the thread's row changes.
template <typename X, bool kDraw, int V>
__global__ void backward_spatial_kernel(const void* __restrict__ g, const X* __restrict__ x, X* __restrict__ dx,
                                        const UnitDev<typename Elem<X>::T>* __restrict__ U,
                                        const typename Elem<X>::T* __restrict__ th,
                                        const typename Elem<X>::T* __restrict__ fm,
                                        const typename Elem<X>::T* __restrict__ fs, BwdArgs A,
                                        typename Elem<X>::T a, typename Elem<X>::T b, double* __restrict__ part) {
  using T = typename Elem<X>::T;
  const int64_t c = blockIdx.x, chunk = blockIdx.y;
  const int64_t r0 = chunk * A.rows_per_chunk;
  const int64_t r1 = r0 + A.rows_per_chunk < A.R ? r0 + A.rows_per_chunk : A.R;
  const uint32_t SV = static_cast<uint32_t>(A.S / V);
  const uint32_t n = static_cast<uint32_t>(r1 - r0) * SV;  // < 2^31 by the host's plan
  const UnitDev<T> u = U[c];
  const bool keep = u.keep != T(0);
  double sm = 0.0, ss = 0.0;
  int64_t row_t = -1;
  T t_th = 0, t_fm = 0, t_fs = 0;
  for (uint32_t t = threadIdx.x; t < n; t += blockDim.x) {
    const uint32_t dr = A.dSV.div(t);
    const int64_t row = r0 + dr;
    const int64_t e0 = (row * A.C + c) * A.S + static_cast<int64_t>(t - dr * SV) * V;
    T dv[V];
    if (!keep) {
#pragma unroll
      for (int l = 0; l < V; ++l) dv[l] = T(0);
      store_lanes<X, V>(dx, e0, V > 1, V, dv);
      continue;
    }
    if (!kDraw && row != row_t) {
      const int64_t i = (A.per_sample ? static_cast<int64_t>(A.dP.div(static_cast<uint32_t>(row))) * A.C : 0) + c;
      t_th = th[i];
      t_fm = fm[i];
      t_fs = fs[i];
      row_t = row;
    }
    T gv[V], xv[V];
    load_lanes_any<V>(g, A.g_dtype, e0, V > 1, V, gv);
    load_lanes<X, V>(x, e0, V > 1, V, xv);
#pragma unroll
    for (int l = 0; l < V; ++l) {
      dv[l] = backward_one<T, kDraw>(gv[l], xv[l], u, A.seed, A.offset + static_cast<uint64_t>(e0 + l), t_th, t_fm,
                                     t_fs, a, b, sm, ss);
    }
    store_lanes<X, V>(dx, e0, V > 1, V, dv);
  }
  block_sum2(sm, ss);
  if (threadIdx.x == 0) {
    part[(chunk * 2) * A.C + c] = sm;
    part[(chunk * 2 + 1) * A.C + c] = ss;
  }
}

// S < kSpatialMinS (S == 1 for [B, T, C] or [B, C]): block (tile, chunk) of 32 threads × 8 row lanes; thread x owns
// the V consecutive columns j0 .. j0+V-1 of the C·S columns (j0 = (tile·32 + x)·V), row lane y the rows
// r0 + y, r0 + y + 8, ... < r1.  Writes part[chunk][0 / 1][j].  Vector accesses when A.vec (C·S a multiple of V and
// every pointer aligned), else lane by lane.
template <typename X, bool kDraw>
__global__ void __launch_bounds__(256, 2)
    backward_columns_kernel(const void* __restrict__ g, const X* __restrict__ x, X* __restrict__ dx,
                            const UnitDev<typename Elem<X>::T>* __restrict__ U,
                            const typename Elem<X>::T* __restrict__ th, const typename Elem<X>::T* __restrict__ fm,
                            const typename Elem<X>::T* __restrict__ fs, BwdArgs A, typename Elem<X>::T a,
                            typename Elem<X>::T b, double* __restrict__ part) {
  using T = typename Elem<X>::T;
  constexpr int V = vec_width<X>();
  __shared__ double sm_s[8][33], ss_s[8][33];
  const int64_t CS = A.C * A.S;
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x) * V;
  const int nvalid = CS - j0 >= V ? V : (CS > j0 ? static_cast<int>(CS - j0) : 0);
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * A.rows_per_chunk;
  const int64_t r1 = r0 + A.rows_per_chunk < A.R ? r0 + A.rows_per_chunk : A.R;
  const bool vec = A.vec && nvalid == V;
  double sm[V], ss[V];
#pragma unroll
  for (int l = 0; l < V; ++l) sm[l] = ss[l] = 0.0;
  if (nvalid > 0) {
    // the lanes' units (carried from j0 / S) and which of them are kept, once per thread
    int cl[V];
    unsigned keep = 0;
    {
      int64_t c = j0 / A.S, s = j0 - c * A.S;
#pragma unroll
      for (int l = 0; l < V; ++l) {
        cl[l] = static_cast<int>(c < A.C ? c : A.C - 1);  // lanes past the end stay on a valid unit (unused)
        if (l < nvalid && U[cl[l]].keep != T(0)) keep |= 1u << l;
        if (++s == A.S) {
          s = 0;
          ++c;
        }
      }
    }
    // table mode: the lanes' (θ, fm, fs), reloaded only when the table row (the example) changes
    T t_th[V], t_fm[V], t_fs[V];
    int64_t trow_t = -1;
#pragma unroll
    for (int l = 0; l < V; ++l) t_th[l] = t_fm[l] = t_fs[l] = T(0);
    for (int64_t row = r0 + threadIdx.y; row < r1; row += blockDim.y) {
      const int64_t e0 = row * CS + j0;
      if (!kDraw) {
        const int64_t trow = A.per_sample ? static_cast<int64_t>(A.dP.div(static_cast<uint32_t>(row))) * A.C : 0;
        if (trow != trow_t) {
#pragma unroll
          for (int l = 0; l < V; ++l) {
            if (keep & (1u << l)) {
              t_th[l] = th[trow + cl[l]];
              t_fm[l] = fm[trow + cl[l]];
              t_fs[l] = fs[trow + cl[l]];
            }
          }
          trow_t = trow;
        }
      }
      T gv[V], xv[V], dv[V];
      load_lanes_any<V>(g, A.g_dtype, e0, vec, nvalid, gv);
      load_lanes<X, V>(x, e0, vec, nvalid, xv);
#pragma unroll
      for (int l = 0; l < V; ++l) {
        dv[l] = T(0);
        if (keep & (1u << l)) {
          if (kDraw) {
            const UnitDev<T> u = U[cl[l]];
            dv[l] = backward_one<T, true>(gv[l], xv[l], u, A.seed, A.offset + static_cast<uint64_t>(e0 + l), T(0),
                                          T(0), T(0), a, b, sm[l], ss[l]);
          } else {
            dv[l] = backward_one<T, false>(gv[l], xv[l], U[0], 0, 0, t_th[l], t_fm[l], t_fs[l], a, b, sm[l], ss[l]);
          }
        }
      }
      store_lanes<X, V>(dx, e0, vec, nvalid, dv);
    }
  }
  // per lane: Σ over the 8 row lanes in a fixed order
#pragma unroll
  for (int l = 0; l < V; ++l) {
    sm_s[threadIdx.y][threadIdx.x] = sm[l];
    ss_s[threadIdx.y][threadIdx.x] = ss[l];
    __syncthreads();
    if (threadIdx.y == 0 && l < nvalid) {
      double tm = 0.0, ts = 0.0;
      for (int k = 0; k < static_cast<int>(blockDim.y); ++k) {
        tm += sm_s[k][threadIdx.x];
        ts += ss_s[k][threadIdx.x];
      }
      part[(chunk * 2) * CS + j0 + l] = tm;
      part[(chunk * 2 + 1) * CS + j0 + l] = ts;
    }
    __syncthreads();
  }
}

// Stage 2: per unit, Σ over chunks (outer) and the unit's `width` columns (inner) in a fixed order.
template <typename M>
__global__ void finalize_kernel(const double* __restrict__ part, int64_t chunks, int64_t cols, int64_t width,
                                int64_t C, const bool* __restrict__ mask, M* __restrict__ dmu, M* __restrict__ dls) {
  FB_LN_STRIDE(c, C) {
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
    // float64 -> float -> 16-bit, like Tensor.to(dtype) from float64
    if constexpr (sizeof(M) == sizeof(double)) {
      dmu[c] = tm;
      dls[c] = ts;
    } else {
      dmu[c] = Elem<M>::st(static_cast<float>(tm));
      dls[c] = Elem<M>::st(static_cast<float>(ts));
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Host-side plan: workspace layout and backward partition, a function of the shape and dtype only.

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

enum class Draws { kInline, kBatch, kSample };

struct Plan {
  Draws draws;
  bool spatial;
  int64_t tab_rows, chunks, rows_per_chunk, part_cols, part_width;
  size_t units_off, tab_off, part_off, bytes;
};

Plan make_plan(int x_dtype, int64_t R, int64_t P, int64_t C, int64_t S, int gran, bool backward) {
  const bool f64 = x_dtype == FB_FLOAT64;
  const size_t tsize = f64 ? sizeof(double) : sizeof(float);
  const size_t usize = f64 ? sizeof(UnitDev<double>) : sizeof(UnitDev<float>);
  const int vw = x_dtype == FB_FLOAT64 ? 2 : (x_dtype == FB_FLOAT32 ? 4 : 8);
  Plan p{};
  // draws that cover x one to one are drawn inline, with the element index as counter: for "batch" on [1, C]
  // (k = c = e) and "sample" with P = S = 1 (k = n·C + c = e)
  if (gran == static_cast<int>(Granularity::kElement) ||
      (gran == static_cast<int>(Granularity::kBatch) && R * S == 1) ||
      (gran == static_cast<int>(Granularity::kSample) && P * S == 1)) {
    p.draws = Draws::kInline;
  } else {
    p.draws = gran == static_cast<int>(Granularity::kBatch) ? Draws::kBatch : Draws::kSample;
  }
  p.tab_rows = p.draws == Draws::kInline ? 0 : (p.draws == Draws::kBatch ? 1 : (P > 0 ? R / P : 0));
  p.units_off = 0;
  p.tab_off = align_up(usize * static_cast<size_t>(C));
  p.part_off = p.tab_off + align_up(tsize * static_cast<size_t>(p.tab_rows * C) * (backward ? 3 : 1));
  p.bytes = p.part_off;
  p.chunks = 1;
  p.part_cols = C;
  p.part_width = 1;
  if (!backward) return p;
  if (R == 0 || C == 0 || S == 0) {
    p.bytes = p.part_off + sizeof(double) * 2 * static_cast<size_t>(C);  // zero partials
    return p;
  }
  p.spatial = S >= kSpatialMinS;
  const int64_t tile_cols = 32 * static_cast<int64_t>(vw);
  const int64_t cols_blocks = p.spatial ? C : (C * S + tile_cols - 1) / tile_cols;
  int64_t chunks = (kTargetBlocks + cols_blocks - 1) / cols_blocks;
  // at least ~2048 elements per block, and a chunk's element count must fit the kernels' 32-bit counters
  const int64_t per_block_cols = p.spatial ? S : tile_cols;
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

// Unit table (+ the "batch" draws) and, for "sample", the [N, C] table.
template <typename T, bool kGrad>
cudaError_t launch_prologue(const Plan& plan, int p_dtype, const void* mu, const void* log_sigma, const bool* mask,
                            double a, double b, int64_t C, uint64_t seed, uint64_t offset, UnitDev<T>* units, T* th,
                            T* fm, T* fs, cudaStream_t stream) {
  if (!cuda::valid_dtype(p_dtype)) return cudaErrorInvalidValue;
  unit_kernel<T, kGrad><<<grid_for(C, kUnitThreads), kUnitThreads, 0, stream>>>(
      mu, log_sigma, p_dtype, mask, a, b, C, plan.draws == Draws::kBatch ? 1 : 0, seed, offset, units, th, fm, fs);
  if (plan.draws == Draws::kSample) {
    const int64_t n = plan.tab_rows * C;
    table_kernel<T, kGrad><<<grid_for(n), kThreads, 0, stream>>>(units, C, n, seed, offset, static_cast<T>(a),
                                                                 static_cast<T>(b), th, fm, fs);
  }
  return cudaSuccess;
}

template <typename X>
cudaError_t forward_typed(const void* xv, void* yv, int p_dtype, const void* mu, const void* log_sigma,
                          const bool* mask, double a, double b, int64_t R, int64_t P, int64_t C, int64_t S, int gran,
                          uint64_t seed, uint64_t offset, void* workspace, cudaStream_t stream) {
  using T = typename Elem<X>::T;
  const int xd = sizeof(X) == 8 ? FB_FLOAT64 : FB_FLOAT32;  // the plan depends on the math type's size only here
  const Plan plan = make_plan(xd, R, P, C, S, gran, false);
  char* ws = static_cast<char*>(workspace);
  UnitDev<T>* units = reinterpret_cast<UnitDev<T>*>(ws + plan.units_off);
  T* tab = reinterpret_cast<T*>(ws + plan.tab_off);
  cudaError_t err =
      launch_prologue<T, false>(plan, p_dtype, mu, log_sigma, mask, a, b, C, seed, offset, units, tab, tab, tab, stream);
  if (err != cudaSuccess) return err;
  const X* x = static_cast<const X*>(xv);
  X* y = static_cast<X*>(yv);
  const int64_t n = R * C * S;
  const bool k32 = n < (int64_t{1} << 31);
  FwdArgs A{};
  A.n = n;
  A.C = C;
  A.S = S;
  A.seed = seed;
  A.offset = offset;
  A.dS = Div32(static_cast<uint32_t>(k32 ? S : 1));
  A.dC = Div32(static_cast<uint32_t>(k32 ? C : 1));
  A.dP = Div32(static_cast<uint32_t>(P));
  A.per_sample = plan.draws == Draws::kSample;
  const bool draw = plan.draws == Draws::kInline;
  const int64_t V = draw ? 1 : vec_width<X>();  // forward_kernel's step
  A.vec = cuda::pack_aligned<X, vec_width<X>()>(xv) && cuda::pack_aligned<X, vec_width<X>()>(yv);
  A.whole = S % V == 0;
  const unsigned int grid = grid_for((n + V - 1) / V);
  const T ta = static_cast<T>(a), tb = static_cast<T>(b);
  if (draw) {
    if (k32) {
      forward_kernel<X, true, true><<<grid, kThreads, 0, stream>>>(x, y, units, tab, A, ta, tb);
    } else {
      forward_kernel<X, true, false><<<grid, kThreads, 0, stream>>>(x, y, units, tab, A, ta, tb);
    }
  } else if (k32) {
    forward_kernel<X, false, true><<<grid, kThreads, 0, stream>>>(x, y, units, tab, A, ta, tb);
  } else {
    forward_kernel<X, false, false><<<grid, kThreads, 0, stream>>>(x, y, units, tab, A, ta, tb);
  }
  return cudaGetLastError();
}

template <typename X, bool kDraw>
void launch_backward(const Plan& plan, const void* g, const X* x, X* dx, const UnitDev<typename Elem<X>::T>* units,
                     const typename Elem<X>::T* th, const typename Elem<X>::T* fm, const typename Elem<X>::T* fs,
                     BwdArgs A, typename Elem<X>::T a, typename Elem<X>::T b, double* part, cudaStream_t stream) {
  constexpr int V = vec_width<X>();
  const bool aligned = cuda::pack_aligned<X, V>(x) && cuda::pack_aligned<X, V>(dx) &&
                       cuda::pack_aligned_any<V>(g, A.g_dtype);
  if (plan.spatial) {
    const dim3 grid(static_cast<unsigned int>(A.C), static_cast<unsigned int>(plan.chunks));
    if (aligned && A.S % V == 0) {
      A.dSV = Div32(static_cast<uint32_t>(A.S / V));
      backward_spatial_kernel<X, kDraw, V><<<grid, kThreads, 0, stream>>>(g, x, dx, units, th, fm, fs, A, a, b, part);
    } else {
      A.dSV = Div32(static_cast<uint32_t>(A.S));
      backward_spatial_kernel<X, kDraw, 1><<<grid, kThreads, 0, stream>>>(g, x, dx, units, th, fm, fs, A, a, b, part);
    }
  } else {
    A.vec = aligned && (A.C * A.S) % V == 0;
    const dim3 grid(static_cast<unsigned int>((A.C * A.S + 32 * V - 1) / (32 * V)),
                    static_cast<unsigned int>(plan.chunks));
    backward_columns_kernel<X, kDraw><<<grid, dim3(32, 8), 0, stream>>>(g, x, dx, units, th, fm, fs, A, a, b, part);
  }
}

template <typename M>
void launch_finalize(const Plan& plan, const double* part, int64_t C, const bool* mask, void* dmu, void* dls,
                     cudaStream_t stream) {
  finalize_kernel<M><<<grid_for(C), kThreads, 0, stream>>>(part, plan.chunks, plan.part_cols, plan.part_width, C,
                                                           mask, static_cast<M*>(dmu), static_cast<M*>(dls));
}

template <typename X>
cudaError_t backward_typed(int g_dtype, const void* g, const void* xv, void* dxv, int p_dtype, const void* mu,
                           const void* log_sigma, const bool* mask, void* dmu, void* dls, double a, double b,
                           int64_t R, int64_t P, int64_t C, int64_t S, int gran, uint64_t seed, uint64_t offset,
                           void* workspace, cudaStream_t stream) {
  using T = typename Elem<X>::T;
  const int xd = sizeof(X) == 8 ? FB_FLOAT64 : (sizeof(X) == 4 ? FB_FLOAT32 : FB_FLOAT16);
  const Plan plan = make_plan(xd, R, P, C, S, gran, true);
  char* ws = static_cast<char*>(workspace);
  UnitDev<T>* units = reinterpret_cast<UnitDev<T>*>(ws + plan.units_off);
  T* th = reinterpret_cast<T*>(ws + plan.tab_off);
  T* fm = th + plan.tab_rows * C;
  T* fs = fm + plan.tab_rows * C;
  double* part = reinterpret_cast<double*>(ws + plan.part_off);
  Plan fin = plan;
  if (R * C * S > 0) {
    cudaError_t err =
        launch_prologue<T, true>(plan, p_dtype, mu, log_sigma, mask, a, b, C, seed, offset, units, th, fm, fs, stream);
    if (err != cudaSuccess) return err;
    BwdArgs A{};
    A.R = R;
    A.C = C;
    A.S = S;
    A.rows_per_chunk = plan.rows_per_chunk;
    A.seed = seed;
    A.offset = offset;
    A.dP = Div32(static_cast<uint32_t>(P));
    A.per_sample = plan.draws == Draws::kSample;
    A.g_dtype = g_dtype;
    const X* x = static_cast<const X*>(xv);
    X* dx = static_cast<X*>(dxv);
    const T ta = static_cast<T>(a), tb = static_cast<T>(b);
    if (plan.draws == Draws::kInline) {
      launch_backward<X, true>(plan, g, x, dx, units, th, fm, fs, A, ta, tb, part, stream);
    } else {
      launch_backward<X, false>(plan, g, x, dx, units, th, fm, fs, A, ta, tb, part, stream);
    }
  } else {
    if (!cuda::valid_dtype(p_dtype)) return cudaErrorInvalidValue;
    // no elements: every sum is 0
    const cudaError_t err = cudaMemsetAsync(part, 0, sizeof(double) * 2 * static_cast<size_t>(C), stream);
    if (err != cudaSuccess) return err;
    fin.chunks = 1;
    fin.part_cols = C;
    fin.part_width = 1;
  }
  switch (p_dtype) {
    case FB_FLOAT32: launch_finalize<float>(fin, part, C, mask, dmu, dls, stream); break;
    case FB_FLOAT64: launch_finalize<double>(fin, part, C, mask, dmu, dls, stream); break;
    case FB_FLOAT16: launch_finalize<__half>(fin, part, C, mask, dmu, dls, stream); break;
    case FB_BFLOAT16: launch_finalize<__nv_bfloat16>(fin, part, C, mask, dmu, dls, stream); break;
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
  return make_plan(x_dtype, R, P, C, S, gran, backward != 0).bytes;
}

extern "C" cudaError_t fb_lognormal_noise_cuda(int x_dtype, const void* x, void* y, int p_dtype, const void* mu,
                                               const void* log_sigma, const bool* mask, double a, double b,
                                               int64_t R, int64_t P, int64_t C, int64_t S, int gran, uint64_t seed,
                                               uint64_t offset, void* workspace, cudaStream_t stream) {
  if (R * C * S == 0) return cudaSuccess;
#define FB_LN_FWD(X) \
  return forward_typed<X>(x, y, p_dtype, mu, log_sigma, mask, a, b, R, P, C, S, gran, seed, offset, workspace, stream)
  switch (x_dtype) {
    case FB_FLOAT32: FB_LN_FWD(float);
    case FB_FLOAT64: FB_LN_FWD(double);
    case FB_FLOAT16: FB_LN_FWD(__half);
    case FB_BFLOAT16: FB_LN_FWD(__nv_bfloat16);
    default: return cudaErrorInvalidValue;
  }
#undef FB_LN_FWD
}

extern "C" cudaError_t fb_lognormal_noise_backward_cuda(int x_dtype, int g_dtype, const void* grad_y, const void* x,
                                                        void* dx, int p_dtype, const void* mu, const void* log_sigma,
                                                        const bool* mask, void* dmu, void* dlog_sigma, double a,
                                                        double b, int64_t R, int64_t P, int64_t C, int64_t S,
                                                        int gran, uint64_t seed, uint64_t offset, void* workspace,
                                                        cudaStream_t stream) {
  if (!fastbayes::cuda::valid_dtype(g_dtype)) return cudaErrorInvalidValue;
#define FB_LN_BWD(X)                                                                                                  \
  return backward_typed<X>(g_dtype, grad_y, x, dx, p_dtype, mu, log_sigma, mask, dmu, dlog_sigma, a, b, R, P, C, S, \
                           gran, seed, offset, workspace, stream)
  switch (x_dtype) {
    case FB_FLOAT32: FB_LN_BWD(float);
    case FB_FLOAT64: FB_LN_BWD(double);
    case FB_FLOAT16: FB_LN_BWD(__half);
    case FB_BFLOAT16: FB_LN_BWD(__nv_bfloat16);
    default: return cudaErrorInvalidValue;
  }
#undef FB_LN_BWD
}
