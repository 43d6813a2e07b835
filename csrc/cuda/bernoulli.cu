// CUDA kernels of bernoulli_gate / bernoulli_gate_backward and scale_mixture_prior / _backward
// (spec: fastbayes/reference/bernoulli.py), torch-free; csrc/cuda/bernoulli_ops.cpp does the tensor glue.
//
// x is [R, C, S] with R = N·P rows.  A small kernel draws the N·C gate bits ξ into a byte table (Philox counter
// offset + n·C + c); when the table is as large as x (P = S = 1, e.g. [B, C]) the passes draw inline instead.  The
// forward selects y = x or 0 on the element bits (any dtype; 16-byte vectors when S allows).  The backward writes
// dx = g·ξ and reduces Σ g·x per unit in double: blocks write fixed partial sums ([chunks, C] or [chunks, C·S]) that
// a second kernel adds in a fixed order, so the result is deterministic (no atomics) and independent of the GPU.
#include <type_traits>

#include "dtype_io.cuh"
#include "fastbayes/philox.h"

namespace fastbayes {
namespace cuda_bernoulli {
namespace {

using cuda::Div32;
using cuda::Elem;

// v where keep else +0, on the bits.
template <typename B>
__device__ __forceinline__ B select_bits(B v, bool keep) {
  return keep ? v : B(0);
}

constexpr int kThreads = 256;
constexpr int kMaxGrid = 65535 * 16;
constexpr int kSpatialMinS = 32;         // S >= this: one block column per unit; below: tiles of 32 columns
constexpr int64_t kTargetBlocks = 1024;  // backward partition target (fixed: results do not depend on the GPU)

unsigned int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < kMaxGrid ? (blocks > 0 ? blocks : 1) : kMaxGrid);
}

__device__ __forceinline__ bool draw(const float* __restrict__ theta, const bool* __restrict__ mask, int64_t c,
                                     uint64_t seed, uint64_t counter) {
  return (mask == nullptr || mask[c]) && philox_uniform(seed, counter) < theta[c];
}

// ------------------------------------------------------------------------------------------------------------
// Draws and forward.

__global__ void draw_kernel(const float* __restrict__ theta, const bool* __restrict__ mask, int64_t C, int64_t n,
                            uint64_t seed, uint64_t offset, uint8_t* __restrict__ xi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    xi[i] = draw(theta, mask, i % C, seed, offset + static_cast<uint64_t>(i));
  }
}

struct Layout {
  int64_t n, C, S, P;  // n = R·C·S elements
  uint64_t seed, offset;
};

// One thread per element (grid-stride).  kInline: P = S = 1, so element e is draw e (counter offset + e).
template <typename B, bool kInline, bool k32>
__global__ void forward_kernel(const B* __restrict__ x, B* __restrict__ y, const uint8_t* __restrict__ xi,
                               const float* __restrict__ theta, const bool* __restrict__ mask, Layout L, Div32 dS,
                               Div32 dC, Div32 dP) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < L.n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c;
    if (k32) {
      const uint32_t q = dS.div(static_cast<uint32_t>(e));
      const uint32_t r = dC.div(q);
      c = q - r * static_cast<uint32_t>(L.C);
      n = dP.div(r);
    } else {
      const int64_t q = e / L.S;
      const int64_t r = q / L.C;
      c = q - r * L.C;
      n = r / L.P;
    }
    const bool keep = kInline ? draw(theta, mask, c, L.seed, L.offset + static_cast<uint64_t>(e)) : xi[n * L.C + c];
    y[e] = select_bits(x[e], keep);
  }
}

// S % V == 0 (V = 16 / sizeof element): 16-byte vectors, all lanes of one (row, unit).  Grid-stride over vectors;
// k32 (nvec < 2^31): the three divisions per vector by the multiply-high divider, else in 64 bits.
template <bool k32>
__global__ void forward_vec_kernel(const uint4* __restrict__ x, uint4* __restrict__ y, const uint8_t* __restrict__ xi,
                                   int64_t nvec, int64_t C, int64_t SV, int64_t P, Div32 dSV, Div32 dC, Div32 dP) {
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c;
    if (k32) {
      const uint32_t q = dSV.div(static_cast<uint32_t>(v));
      const uint32_t row = dC.div(q);
      c = q - row * static_cast<uint32_t>(C);
      n = dP.div(row);
    } else {
      const int64_t q = v / SV, row = q / C;
      c = q - row * C;
      n = row / P;
    }
    const uint4 z = make_uint4(0u, 0u, 0u, 0u);
    y[v] = xi[n * C + c] ? x[v] : z;
  }
}

// ------------------------------------------------------------------------------------------------------------
// Backward.

// Sum over the block in a fixed order (shuffle tree per warp, then warp 0 over the warp sums).
__device__ __forceinline__ double block_sum(double a) {
  __shared__ double sa[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a += __shfl_down_sync(0xffffffffu, a, o);
  if (lane == 0) sa[warp] = a;
  __syncthreads();
  if (warp == 0) {
    a = lane < nw ? sa[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a += __shfl_down_sync(0xffffffffu, a, o);
  }
  return a;
}

struct BwdShape {
  int64_t R, C, S, P, rows_per_chunk;  // R, C, S < 2^31 (checked by the glue)
  uint64_t seed, offset;
  bool inline_draws;
};

// dx = g where ξ else 0, in x's dtype; returns the math-dtype product g·x.
template <typename X, typename G>
__device__ __forceinline__ typename Elem<X>::T backward_element(const G* __restrict__ g, const X* __restrict__ x,
                                                                X* __restrict__ dx, int64_t e, bool keep) {
  using T = typename Elem<X>::T;
  using B = typename Elem<X>::B;
  const G gv = g[e];
  const T gm = static_cast<T>(Elem<G>::ld(gv));
  if constexpr (std::is_same_v<G, X>) {
    reinterpret_cast<B*>(dx)[e] = select_bits(reinterpret_cast<const B*>(g)[e], keep);
  } else {
    dx[e] = keep ? Elem<X>::st(gm) : Elem<X>::st(T(0));
  }
  return gm * Elem<X>::ld(x[e]);
}

// S >= kSpatialMinS: block (c, chunk) walks rows [r0, r1) × s of unit c and writes part[chunk][c].
template <typename X, typename G>
__global__ void backward_spatial_kernel(const G* __restrict__ g, const X* __restrict__ x, X* __restrict__ dx,
                                        const uint8_t* __restrict__ xi, BwdShape sh, Div32 dS, Div32 dP,
                                        double* __restrict__ part) {
  const int64_t c = blockIdx.x, chunk = blockIdx.y;
  const int64_t r0 = chunk * sh.rows_per_chunk;
  const int64_t r1 = r0 + sh.rows_per_chunk < sh.R ? r0 + sh.rows_per_chunk : sh.R;
  const uint32_t n = static_cast<uint32_t>((r1 - r0) * sh.S);  // < 2^31 by the host's plan
  double acc = 0.0;
  for (uint32_t t = threadIdx.x; t < n; t += blockDim.x) {
    const uint32_t dr = dS.div(t);
    const int64_t row = r0 + dr;
    const int64_t e = (row * sh.C + c) * sh.S + (t - dr * static_cast<uint32_t>(sh.S));
    const bool keep = xi[static_cast<int64_t>(dP.div(static_cast<uint32_t>(row))) * sh.C + c];
    acc += static_cast<double>(backward_element<X, G>(g, x, dx, e, keep));
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[chunk * sh.C + c] = acc;
}

// S < kSpatialMinS (S == 1 for [B, T, C] or [B, C]): block (tile, chunk) of 32 columns j = c·S + s × 8 row lanes,
// rows [r0, r1); writes part[chunk][j] over the C·S columns.
template <typename X, typename G>
__global__ void backward_columns_kernel(const G* __restrict__ g, const X* __restrict__ x, X* __restrict__ dx,
                                        const uint8_t* __restrict__ xi, const float* __restrict__ theta,
                                        const bool* __restrict__ mask, BwdShape sh, Div32 dP,
                                        double* __restrict__ part) {
  __shared__ double s_acc[8][33];
  const int64_t CS = sh.C * sh.S;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * sh.rows_per_chunk;
  const int64_t r1 = r0 + sh.rows_per_chunk < sh.R ? r0 + sh.rows_per_chunk : sh.R;
  double acc = 0.0;
  if (j < CS) {
    const int64_t c = j / sh.S;
    for (int64_t row = r0 + threadIdx.y; row < r1; row += blockDim.y) {
      const int64_t e = row * CS + j;
      const bool keep = sh.inline_draws
                            ? draw(theta, mask, c, sh.seed, sh.offset + static_cast<uint64_t>(e))
                            : xi[static_cast<int64_t>(dP.div(static_cast<uint32_t>(row))) * sh.C + c];
      acc += static_cast<double>(backward_element<X, G>(g, x, dx, e, keep));
    }
  }
  s_acc[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < CS) {
    double t = 0.0;
    for (int k = 0; k < static_cast<int>(blockDim.y); ++k) t += s_acc[k][threadIdx.x];
    part[chunk * CS + j] = t;
  }
}

// Stage 2: per unit, Σ over chunks (outer) and the unit's `width` columns (inner) in a fixed order.
__global__ void finalize_kernel(const double* __restrict__ part, int64_t chunks, int64_t cols, int64_t width,
                                int64_t C, const bool* __restrict__ mask, float* __restrict__ dtheta) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double t = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      const double* p = part + k * cols + c * width;
      for (int64_t s = 0; s < width; ++s) t += p[s];
    }
    dtheta[c] = (mask != nullptr && !mask[c]) ? 0.0f : static_cast<float>(t);
  }
}

// ------------------------------------------------------------------------------------------------------------
// Host-side plan: workspace layout and backward partition, a function of the shape only.

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

struct Plan {
  bool inline_draws, spatial;
  int64_t tab, chunks, rows_per_chunk, part_cols, part_width;
  size_t part_off, bytes;
};

Plan make_plan(int64_t R, int64_t P, int64_t C, int64_t S, bool backward) {
  Plan p{};
  p.inline_draws = P == 1 && S == 1;
  p.tab = p.inline_draws || P == 0 ? 0 : (R / P) * C;
  p.part_off = align_up(static_cast<size_t>(p.tab));
  p.bytes = p.part_off;
  p.chunks = 1;
  p.part_cols = C;
  p.part_width = 1;
  if (!backward || R == 0 || C == 0 || S == 0) {
    if (backward) p.bytes = p.part_off + sizeof(double) * static_cast<size_t>(C);  // zero partials
    return p;
  }
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
  p.bytes = p.part_off + sizeof(double) * static_cast<size_t>(p.chunks * p.part_cols);
  return p;
}

void launch_draws(const Plan& plan, const float* theta, const bool* mask, int64_t C, uint64_t seed, uint64_t offset,
                  uint8_t* xi, cudaStream_t stream) {
  if (plan.tab > 0) {
    draw_kernel<<<grid_for(plan.tab), kThreads, 0, stream>>>(theta, mask, C, plan.tab, seed, offset, xi);
  }
}

template <typename B>
void forward_bits(const void* xv, void* yv, const float* theta, const bool* mask, int64_t R, int64_t P, int64_t C,
                  int64_t S, uint64_t seed, uint64_t offset, const Plan& plan, const uint8_t* xi,
                  cudaStream_t stream) {
  const int64_t n = R * C * S;
  constexpr int V = static_cast<int>(16 / sizeof(B));
  const bool aligned = (reinterpret_cast<uintptr_t>(xv) % 16 == 0) && (reinterpret_cast<uintptr_t>(yv) % 16 == 0);
  if (!plan.inline_draws && S % V == 0 && aligned) {
    const int64_t nvec = n / V;
    const bool k32 = nvec < (int64_t{1} << 31);
    const Div32 dSV(static_cast<uint32_t>(k32 ? S / V : 1)), dC(static_cast<uint32_t>(k32 ? C : 1)),
        dP(static_cast<uint32_t>(k32 ? P : 1));
    if (k32) {
      forward_vec_kernel<true><<<grid_for(nvec), kThreads, 0, stream>>>(
          static_cast<const uint4*>(xv), static_cast<uint4*>(yv), xi, nvec, C, S / V, P, dSV, dC, dP);
    } else {
      forward_vec_kernel<false><<<grid_for(nvec), kThreads, 0, stream>>>(
          static_cast<const uint4*>(xv), static_cast<uint4*>(yv), xi, nvec, C, S / V, P, dSV, dC, dP);
    }
    return;
  }
  const B* x = static_cast<const B*>(xv);
  B* y = static_cast<B*>(yv);
  const Layout L{n, C, S, P, seed, offset};
  const bool k32 = n < (int64_t{1} << 31);
  const Div32 dS(static_cast<uint32_t>(k32 ? S : 1)), dC(static_cast<uint32_t>(k32 ? C : 1)),
      dP(static_cast<uint32_t>(k32 ? P : 1));
  const unsigned int grid = grid_for(n);
  if (plan.inline_draws) {
    if (k32) {
      forward_kernel<B, true, true><<<grid, kThreads, 0, stream>>>(x, y, xi, theta, mask, L, dS, dC, dP);
    } else {
      forward_kernel<B, true, false><<<grid, kThreads, 0, stream>>>(x, y, xi, theta, mask, L, dS, dC, dP);
    }
  } else if (k32) {
    forward_kernel<B, false, true><<<grid, kThreads, 0, stream>>>(x, y, xi, theta, mask, L, dS, dC, dP);
  } else {
    forward_kernel<B, false, false><<<grid, kThreads, 0, stream>>>(x, y, xi, theta, mask, L, dS, dC, dP);
  }
}

template <typename X, typename G>
cudaError_t backward_typed(const void* gv, const void* xv, void* dxv, const float* theta, const bool* mask,
                           float* dtheta, int64_t R, int64_t P, int64_t C, int64_t S, uint64_t seed, uint64_t offset,
                           void* workspace, cudaStream_t stream) {
  const Plan plan = make_plan(R, P, C, S, true);
  char* ws = static_cast<char*>(workspace);
  uint8_t* xi = reinterpret_cast<uint8_t*>(ws);
  double* part = reinterpret_cast<double*>(ws + plan.part_off);
  if (R * C * S > 0) {
    launch_draws(plan, theta, mask, C, seed, offset, xi, stream);
    const BwdShape sh{R, C, S, P, plan.rows_per_chunk, seed, offset, plan.inline_draws};
    const G* g = static_cast<const G*>(gv);
    const X* x = static_cast<const X*>(xv);
    X* dx = static_cast<X*>(dxv);
    if (plan.spatial) {
      const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(plan.chunks));
      backward_spatial_kernel<X, G><<<grid, kThreads, 0, stream>>>(g, x, dx, xi, sh, Div32(static_cast<uint32_t>(S)),
                                                                   Div32(static_cast<uint32_t>(P)), part);
    } else {
      const dim3 grid(static_cast<unsigned int>((C * S + 31) / 32), static_cast<unsigned int>(plan.chunks));
      backward_columns_kernel<X, G><<<grid, dim3(32, 8), 0, stream>>>(g, x, dx, xi, theta, mask, sh,
                                                                      Div32(static_cast<uint32_t>(P)), part);
    }
  } else if (C > 0) {
    const cudaError_t err = cudaMemsetAsync(part, 0, sizeof(double) * static_cast<size_t>(C), stream);
    if (err != cudaSuccess) return err;
  }
  finalize_kernel<<<grid_for(C), kThreads, 0, stream>>>(part, plan.chunks, plan.part_cols, plan.part_width, C, mask,
                                                        dtheta);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------------------------------
// scale_mixture_prior: one thread per unit, float64 math (reference _components, same evaluation order).

constexpr double kLog2Pi = 1.8378770664093454836;

struct PriorTerms {
  double c0, c1, h0, h1;
};

__device__ __forceinline__ PriorTerms prior_terms(double sq, double k, double lv0, double lv1) {
  const double h0 = 0.5 * ::exp(-lv0), h1 = 0.5 * ::exp(-lv1);
  return {sq * h0 + 0.5 * k * (kLog2Pi + lv0), sq * h1 + 0.5 * k * (kLog2Pi + lv1), h0, h1};
}

template <typename T>
__global__ void prior_kernel(const T* __restrict__ theta, const T* __restrict__ sq, const T* __restrict__ k,
                             const T* __restrict__ lv0, const T* __restrict__ lv1, T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PriorTerms t = prior_terms(sq[i], k[i], lv0[i], lv1[i]);
    const double w = theta[i];
    out[i] = static_cast<T>(w * t.c1 + (1.0 - w) * t.c0);
  }
}

template <typename T>
__global__ void prior_backward_kernel(const T* __restrict__ grad, const T* __restrict__ theta, const T* __restrict__ sq,
                                      const T* __restrict__ k, const T* __restrict__ lv0, const T* __restrict__ lv1,
                                      T* __restrict__ dtheta, T* __restrict__ dsq, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PriorTerms t = prior_terms(sq[i], k[i], lv0[i], lv1[i]);
    const double g = grad[i], w = theta[i];
    dtheta[i] = static_cast<T>(g * (t.c1 - t.c0));
    dsq[i] = static_cast<T>(g * (w * t.h1 + (1.0 - w) * t.h0));
  }
}

}  // namespace
}  // namespace cuda_bernoulli
}  // namespace fastbayes

using namespace fastbayes::cuda_bernoulli;

extern "C" size_t fb_bernoulli_workspace_bytes(int64_t R, int64_t P, int64_t C, int64_t S, int backward) {
  return make_plan(R, P, C, S, backward != 0).bytes;
}

extern "C" cudaError_t fb_bernoulli_gate_cuda(int x_dtype, const void* x, void* y, const float* theta,
                                              const bool* mask, int64_t R, int64_t P, int64_t C, int64_t S,
                                              uint64_t seed, uint64_t offset, void* workspace, cudaStream_t stream) {
  if (R * C * S == 0) return cudaSuccess;
  const Plan plan = make_plan(R, P, C, S, false);
  uint8_t* xi = static_cast<uint8_t*>(workspace);
  launch_draws(plan, theta, mask, C, seed, offset, xi, stream);
  switch (x_dtype) {
    case FB_FLOAT32: forward_bits<uint32_t>(x, y, theta, mask, R, P, C, S, seed, offset, plan, xi, stream); break;
    case FB_FLOAT64:
      forward_bits<unsigned long long>(x, y, theta, mask, R, P, C, S, seed, offset, plan, xi, stream);
      break;
    case FB_FLOAT16:
    case FB_BFLOAT16: forward_bits<uint16_t>(x, y, theta, mask, R, P, C, S, seed, offset, plan, xi, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

extern "C" cudaError_t fb_bernoulli_gate_backward_cuda(int x_dtype, int g_dtype, const void* grad_y, const void* x,
                                                       void* dx, const float* theta, const bool* mask, float* dtheta,
                                                       int64_t R, int64_t P, int64_t C, int64_t S, uint64_t seed,
                                                       uint64_t offset, void* workspace, cudaStream_t stream) {
#define FB_BG_BWD(X, G) \
  return backward_typed<X, G>(grad_y, x, dx, theta, mask, dtheta, R, P, C, S, seed, offset, workspace, stream)
  const bool same = g_dtype == x_dtype;
  switch (x_dtype) {
    case FB_FLOAT32:
      if (g_dtype != FB_FLOAT32) return cudaErrorInvalidValue;
      FB_BG_BWD(float, float);
    case FB_FLOAT64:
      if (g_dtype != FB_FLOAT64) return cudaErrorInvalidValue;
      FB_BG_BWD(double, double);
    case FB_FLOAT16:
      if (same) FB_BG_BWD(__half, __half);
      if (g_dtype != FB_FLOAT32) return cudaErrorInvalidValue;
      FB_BG_BWD(__half, float);
    case FB_BFLOAT16:
      if (same) FB_BG_BWD(__nv_bfloat16, __nv_bfloat16);
      if (g_dtype != FB_FLOAT32) return cudaErrorInvalidValue;
      FB_BG_BWD(__nv_bfloat16, float);
    default: return cudaErrorInvalidValue;
  }
#undef FB_BG_BWD
}

extern "C" cudaError_t fb_scale_mixture_prior_cuda(int dtype, const void* theta, const void* sq_norm, const void* k,
                                                   const void* log_var0, const void* log_var1, void* out, int64_t n,
                                                   cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned int grid = grid_for(n);
  switch (dtype) {
    case FB_FLOAT32:
      prior_kernel<float><<<grid, kThreads, 0, stream>>>(
          static_cast<const float*>(theta), static_cast<const float*>(sq_norm), static_cast<const float*>(k),
          static_cast<const float*>(log_var0), static_cast<const float*>(log_var1), static_cast<float*>(out), n);
      break;
    case FB_FLOAT64:
      prior_kernel<double><<<grid, kThreads, 0, stream>>>(
          static_cast<const double*>(theta), static_cast<const double*>(sq_norm), static_cast<const double*>(k),
          static_cast<const double*>(log_var0), static_cast<const double*>(log_var1), static_cast<double*>(out), n);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

extern "C" cudaError_t fb_scale_mixture_prior_backward_cuda(int dtype, const void* grad, const void* theta,
                                                            const void* sq_norm, const void* k, const void* log_var0,
                                                            const void* log_var1, void* dtheta, void* dsq, int64_t n,
                                                            cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned int grid = grid_for(n);
  switch (dtype) {
    case FB_FLOAT32:
      prior_backward_kernel<float><<<grid, kThreads, 0, stream>>>(
          static_cast<const float*>(grad), static_cast<const float*>(theta), static_cast<const float*>(sq_norm),
          static_cast<const float*>(k), static_cast<const float*>(log_var0), static_cast<const float*>(log_var1),
          static_cast<float*>(dtheta), static_cast<float*>(dsq), n);
      break;
    case FB_FLOAT64:
      prior_backward_kernel<double><<<grid, kThreads, 0, stream>>>(
          static_cast<const double*>(grad), static_cast<const double*>(theta), static_cast<const double*>(sq_norm),
          static_cast<const double*>(k), static_cast<const double*>(log_var0), static_cast<const double*>(log_var1),
          static_cast<double*>(dtheta), static_cast<double*>(dsq), n);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
