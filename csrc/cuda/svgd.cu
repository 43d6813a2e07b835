// CUDA kernels of svgd_kernel_matrix / svgd_apply (spec: fastbayes/reference/svgd.py), torch-free with C-ABI
// launchers; csrc/cuda/svgd_ops.cpp does the tensor glue.  Everything stays on the device: no host sync.
//
// svgd_kernel_matrix (per particle tensor x [n, m], float32 or float64):
//   gram_kernel      grid (column split, pair of row tiles ti <= tj).  A 16×16 thread block computes an R·16 square
//                    tile of x̃ x̃ᵀ, x̃ = x − x[0] (distances are shift-invariant; the shift removes the cancellation
//                    of ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j for particles far from the origin), over the split's columns in
//                    chunks of 32 staged in shared memory; each chunk's product is added to float64 accumulators.
//                    Tensors after the first add into the same partial buffer [splits, n, n] (same stream: ordered).
//   reduce_kernel    sums the partials over the splits in a fixed order (deterministic, no atomics) into G.
//   finalize_kernel  one block: D = max(0, G_ii + G_jj − 2 G_ij), diagonal 0; the median of the n(n−1)/2 upper
//                    values by two radix selections (8 passes of 8 bits over the float64 bit patterns, which order
//                    like the values for non-negative doubles) and its fallbacks; K = exp(−D/h), h.
// The column split of the Gram pass is a function of n and the widest tensor only (fb_svgd_gram_splits: a fixed
// target of blocks, not the SM count), so K and h do not depend on the GPU model.
// svgd_apply: φ = K·Y + diag(c·r)·X with Y = S/n − c·X, c = 2/(h n), r = K·1 (the reference's two products
//   regrouped into one), one kernel: apply_kernel reads K (float64, L2-resident) in the chunks it stages anyway,
//   forms r from those same loads and c, 1/n from h, so there is no per-tensor coefficient pass.  8 warps, warp w
//   owning R rows of φ and lane l the columns l, l+32, l+64, l+96 of a 128-column block (conflict-free shared
//   reads, coalesced loads and stores), so a block holds up to 128 rows: for n <= 128 X and S are read once (the
//   epilogue's X rows come back from L2) and φ is written once.
#include <math.h>

#include "dtype_io.cuh"

namespace fastbayes {
namespace cuda_svgd {
namespace {

constexpr int kGramChunk = 32;   // columns staged per step of gram_kernel
constexpr int kApplyCols = 128;  // columns of φ per apply block (32 lanes × 4)
constexpr int kFinalizeThreads = 1024;
constexpr int64_t kGramTargetBlocks = 512;  // fixed (about 4 blocks per SM of an H100/H200), never the SM count

// ---------------------------------------------------------------------------------------------------------
// Gram matrix

// (ti, tj) of pair p in the order (0,0), (0,1), ..., (0,T-1), (1,1), ...
__device__ __forceinline__ void tile_pair(int p, int tiles, int* ti, int* tj) {
  int i = 0;
  while (p >= tiles - i) {
    p -= tiles - i;
    ++i;
  }
  *ti = i;
  *tj = i + p;
}

template <typename T, int R>
__global__ void __launch_bounds__(256) gram_kernel(const T* __restrict__ x, int64_t n, int64_t m,
                                                   int64_t cols_per_split, int tiles, int accumulate,
                                                   double* __restrict__ partial) {
  constexpr int TILE = 16 * R;
  __shared__ T xi_s[TILE][kGramChunk + 1];
  __shared__ T xj_s[TILE][kGramChunk + 1];
  __shared__ T x0_s[kGramChunk];
  int ti, tj;
  tile_pair(static_cast<int>(blockIdx.y), tiles, &ti, &tj);
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
  const int64_t i0 = static_cast<int64_t>(ti) * TILE, j0 = static_cast<int64_t>(tj) * TILE;
  const int64_t c_lo = static_cast<int64_t>(blockIdx.x) * cols_per_split;
  const int64_t c_hi = c_lo + cols_per_split < m ? c_lo + cols_per_split : m;
  double acc[R][R];
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int b = 0; b < R; ++b) acc[a][b] = 0.0;

  for (int64_t k0 = c_lo; k0 < c_hi; k0 += kGramChunk) {
    if (tid < kGramChunk) x0_s[tid] = (k0 + tid < c_hi) ? x[k0 + tid] : T(0);
    __syncthreads();
    for (int e = tid; e < TILE * kGramChunk; e += 256) {
      const int r = e / kGramChunk, cc = e % kGramChunk;
      const int64_t col = k0 + cc;
      const bool okc = col < c_hi;
      const int64_t ri = i0 + r, rj = j0 + r;
      xi_s[r][cc] = (okc && ri < n) ? x[ri * m + col] - x0_s[cc] : T(0);
      xj_s[r][cc] = (okc && rj < n) ? x[rj * m + col] - x0_s[cc] : T(0);
    }
    __syncthreads();
    T part[R][R];
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int b = 0; b < R; ++b) part[a][b] = T(0);
#pragma unroll 8
    for (int kk = 0; kk < kGramChunk; ++kk) {
      T u[R], v[R];
#pragma unroll
      for (int a = 0; a < R; ++a) u[a] = xi_s[ty + 16 * a][kk];
#pragma unroll
      for (int b = 0; b < R; ++b) v[b] = xj_s[tx + 16 * b][kk];
#pragma unroll
      for (int a = 0; a < R; ++a)
#pragma unroll
        for (int b = 0; b < R; ++b) part[a][b] = fma(u[a], v[b], part[a][b]);
    }
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int b = 0; b < R; ++b) acc[a][b] += static_cast<double>(part[a][b]);
    __syncthreads();
  }
  double* out = partial + static_cast<int64_t>(blockIdx.x) * n * n;
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int b = 0; b < R; ++b) {
      const int64_t i = i0 + ty + 16 * a, j = j0 + tx + 16 * b;
      if (i < n && j < n) out[i * n + j] = accumulate ? out[i * n + j] + acc[a][b] : acc[a][b];
    }
}

// G[i][j] = Σ_s partial[s][a][b], (a, b) the entry a tile pair ti <= tj wrote.
__global__ void reduce_kernel(const double* __restrict__ partial, int64_t splits, int64_t n, int tile,
                              double* __restrict__ G) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * n) return;
  int64_t i = idx / n, j = idx % n;
  if (i / tile > j / tile) {
    const int64_t t = i;
    i = j;
    j = t;
  }
  double s = 0.0;
  for (int64_t p = 0; p < splits; ++p) s += partial[p * n * n + i * n + j];
  G[idx] = s;
}

// k-th smallest (0-based) of cnt non-negative doubles given as bit patterns; all threads of the block call it.
__device__ unsigned long long block_select(const unsigned long long* keys, int64_t cnt, int64_t k,
                                           unsigned int* hist, unsigned long long* s_k, int* s_digit) {
  unsigned long long prefix = 0, mask = 0;
  int64_t kk = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < cnt; idx += blockDim.x) {
      const unsigned long long key = keys[idx];
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255ull], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long cum = 0;
      int digit = 255;
      for (int b = 0; b < 256; ++b) {
        if (static_cast<unsigned long long>(kk) < cum + hist[b]) {
          digit = b;
          break;
        }
        cum += hist[b];
      }
      *s_digit = digit;
      *s_k = static_cast<unsigned long long>(kk) - cum;
    }
    __syncthreads();
    prefix |= static_cast<unsigned long long>(*s_digit) << shift;
    mask |= 255ull << shift;
    kk = static_cast<int64_t>(*s_k);
    __syncthreads();
  }
  return prefix;
}

// work: D's upper triangle as keys [n(n−1)/2].  K holds D until the last step.
__global__ void __launch_bounds__(kFinalizeThreads) finalize_kernel(const double* __restrict__ G, int64_t n,
                                                                    double bandwidth, double* __restrict__ K,
                                                                    double* __restrict__ h_out,
                                                                    unsigned long long* __restrict__ keys) {
  __shared__ unsigned int hist[256];
  __shared__ unsigned long long s_k, s_red[kFinalizeThreads / 32];
  __shared__ int s_digit;
  __shared__ double s_h;
  const int64_t cnt = n * (n - 1) / 2;
  for (int64_t idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int64_t i = idx / n, j = idx % n;
    double d = 0.0;
    if (i != j) {
      const int64_t a = i < j ? i : j, b = i < j ? j : i;
      d = G[a * n + a] + G[b * n + b] - 2.0 * G[a * n + b];
      d = d > 0.0 ? d : 0.0;
      if (i < j) {
        // index of (i, j) in the row-major upper triangle
        const int64_t p = i * (2 * n - i - 1) / 2 + (j - i - 1);
        keys[p] = static_cast<unsigned long long>(__double_as_longlong(d));
      }
    }
    K[idx] = d;
  }
  __syncthreads();
  if (bandwidth > 0.0) {
    if (threadIdx.x == 0) s_h = bandwidth;
  } else {
    const double lo = __longlong_as_double(static_cast<long long>(block_select(keys, cnt, (cnt - 1) / 2, hist, &s_k,
                                                                               &s_digit)));
    const double hi = (cnt % 2 == 0)
                          ? __longlong_as_double(static_cast<long long>(block_select(keys, cnt, cnt / 2, hist, &s_k,
                                                                                     &s_digit)))
                          : lo;
    // largest squared distance (fallback when the median is 0)
    unsigned long long mx = 0;
    for (int64_t idx = threadIdx.x; idx < cnt; idx += blockDim.x) mx = keys[idx] > mx ? keys[idx] : mx;
    for (int off = 16; off > 0; off >>= 1) {
      const unsigned long long o = __shfl_down_sync(0xffffffffu, mx, off);
      mx = o > mx ? o : mx;
    }
    if ((threadIdx.x & 31) == 0) s_red[threadIdx.x / 32] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) mx = s_red[w] > mx ? s_red[w] : mx;
      double med = 0.5 * (lo + hi);
      if (!(med > 0.0)) med = __longlong_as_double(static_cast<long long>(mx));
      s_h = med > 0.0 ? med / log(static_cast<double>(n + 1)) : 1.0;
    }
  }
  __syncthreads();
  const double h = s_h;
  for (int64_t idx = threadIdx.x; idx < n * n; idx += blockDim.x) K[idx] = exp(-K[idx] / h);
  if (threadIdx.x == 0) *h_out = h;
}

// ---------------------------------------------------------------------------------------------------------
// φ = K·Y + diag(c·r)·X

template <typename T, int R>
__global__ void __launch_bounds__(256) apply_kernel(const double* __restrict__ K, const double* __restrict__ h,
                                                    const T* __restrict__ x, const T* __restrict__ s,
                                                    T* __restrict__ out, int64_t n, int64_t m) {
  constexpr int JC = sizeof(T) == 4 ? 16 : 8;  // particles per staged chunk (divides 32 and 256)
  constexpr int ROWS = 8 * R;
  constexpr int TPR = 256 / ROWS;              // threads per row of a staged K chunk (2 .. 32, divides 32)
  constexpr int KJ = (JC + TPR - 1) / TPR;     // K entries a thread stages per chunk
  __shared__ T ys[JC][kApplyCols];
  __shared__ T ks[JC][ROWS + 1];  // +1: the staging stores walk jj
  __shared__ double cr_s[ROWS];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kApplyCols;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * ROWS;
  const double inv_n_d = 1.0 / static_cast<double>(n), c_d = 2.0 * inv_n_d / *h;
  const T inv_n = static_cast<T>(inv_n_d), c = static_cast<T>(c_d);
  T acc[R][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[r][q] = T(0);
  // r_i = Σ_j K_ij in float64 from the staged loads: thread tid stages row ii_t = tid / TPR of every chunk (the
  // particles tj, tj + TPR, ...), so one float64 accumulator per thread holds its share of r_{i0 + ii_t}
  const int ii_t = tid / TPR, tj = tid % TPR;
  double rpart = 0.0;

  for (int64_t j0 = 0; j0 < n; j0 += JC) {
    for (int e = tid; e < JC * kApplyCols; e += 256) {
      const int jj = e / kApplyCols, cc = e % kApplyCols;
      const int64_t j = j0 + jj, col = col0 + cc;
      T y = T(0);
      if (j < n && col < m) {
        const int64_t o = j * m + col;
        y = s[o] * inv_n - c * x[o];
      }
      ys[jj][cc] = y;
    }
#pragma unroll
    for (int k = 0; k < KJ; ++k) {
      const int jj = tj + TPR * k;  // consecutive threads: consecutive particles of one row
      if (jj < JC) {
        const int64_t i = i0 + ii_t, j = j0 + jj;
        const double kv = (i < n && j < n) ? K[i * n + j] : 0.0;
        rpart += kv;
        ks[jj][ii_t] = static_cast<T>(kv);
      }
    }
    __syncthreads();
#pragma unroll
    for (int jj = 0; jj < JC; ++jj) {
      T y[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) y[q] = ys[jj][lane + 32 * q];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const T k = ks[jj][warp * R + r];
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] = fma(k, y[q], acc[r][q]);
      }
    }
    __syncthreads();
  }
  // Σ over the TPR consecutive lanes that share a row, in a fixed butterfly order; c·r for the epilogue
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) rpart += __shfl_xor_sync(0xffffffffu, rpart, o);
  if (tj == 0) cr_s[ii_t] = c_d * rpart;
  __syncthreads();
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = i0 + warp * R + r;
    if (i >= n) continue;
    const T d = static_cast<T>(cr_s[warp * R + r]);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t col = col0 + lane + 32 * q;
      if (col < m) out[i * m + col] = fma(d, x[i * m + col], acc[r][q]);
    }
  }
}

int gram_r(int64_t n) { return n <= 16 ? 1 : (n <= 32 ? 2 : 4); }

template <typename T>
void launch_gram(const T* x, int64_t n, int64_t m, int64_t splits, int accumulate, double* partial,
                 cudaStream_t stream) {
  const int r = gram_r(n), tile = 16 * r;
  const int tiles = static_cast<int>((n + tile - 1) / tile);
  const int pairs = tiles * (tiles + 1) / 2;
  int64_t cols = (m + splits - 1) / splits;
  cols = (cols + kGramChunk - 1) / kGramChunk * kGramChunk;
  const int64_t used = (m + cols - 1) / cols;
  const dim3 grid(static_cast<unsigned>(used), static_cast<unsigned>(pairs)), block(16, 16);
  switch (r) {
    case 1: gram_kernel<T, 1><<<grid, block, 0, stream>>>(x, n, m, cols, tiles, accumulate, partial); break;
    case 2: gram_kernel<T, 2><<<grid, block, 0, stream>>>(x, n, m, cols, tiles, accumulate, partial); break;
    default: gram_kernel<T, 4><<<grid, block, 0, stream>>>(x, n, m, cols, tiles, accumulate, partial); break;
  }
}

int apply_r(int64_t n, bool f64) {
  const int cap = f64 ? 8 : 16;
  int r = 1;
  while (8 * r < n && r < cap) r *= 2;
  return r;
}

template <typename T>
void launch_apply(const double* K, const double* h, const T* x, const T* s, T* out, int64_t n, int64_t m,
                  cudaStream_t stream) {
  const int r = apply_r(n, sizeof(T) == 8);
  const dim3 grid(static_cast<unsigned>((m + kApplyCols - 1) / kApplyCols),
                  static_cast<unsigned>((n + 8 * r - 1) / (8 * r)));
  switch (r) {
    case 1: apply_kernel<T, 1><<<grid, 256, 0, stream>>>(K, h, x, s, out, n, m); break;
    case 2: apply_kernel<T, 2><<<grid, 256, 0, stream>>>(K, h, x, s, out, n, m); break;
    case 4: apply_kernel<T, 4><<<grid, 256, 0, stream>>>(K, h, x, s, out, n, m); break;
    case 8: apply_kernel<T, 8><<<grid, 256, 0, stream>>>(K, h, x, s, out, n, m); break;
    default:
      if constexpr (sizeof(T) == 4) apply_kernel<T, 16><<<grid, 256, 0, stream>>>(K, h, x, s, out, n, m);
      break;
  }
}

}  // namespace
}  // namespace cuda_svgd
}  // namespace fastbayes

using namespace fastbayes::cuda_svgd;

extern "C" {

// Number of column splits of the Gram pass for n particles and at most max_m columns per tensor: a fixed target
// of blocks (not the device's SM count, so the float64 summation order, hence K and h, is the same on every GPU),
// each split at least 8 chunks wide.
int64_t fb_svgd_gram_splits(int64_t n, int64_t max_m) {
  const int tile = 16 * gram_r(n);
  const int64_t tiles = (n + tile - 1) / tile, pairs = tiles * (tiles + 1) / 2;
  int64_t splits = (kGramTargetBlocks + pairs - 1) / pairs;
  const int64_t by_cols = (max_m + 8 * kGramChunk - 1) / (8 * kGramChunk);
  if (splits > by_cols) splits = by_cols;
  if (splits > 65535) splits = 65535;
  return splits < 1 ? 1 : splits;
}

// partial [splits, n, n] float64: written (accumulate = 0) or added to.  dtype: 0 float32, 1 float64.
cudaError_t fb_svgd_gram_cuda(int dtype, const void* x, int64_t n, int64_t m, int64_t splits, int accumulate,
                              double* partial, cudaStream_t stream) {
  if (n < 1 || m < 1) return cudaSuccess;
  if (dtype == FB_FLOAT32) {
    launch_gram(static_cast<const float*>(x), n, m, splits, accumulate, partial, stream);
  } else if (dtype == FB_FLOAT64) {
    launch_gram(static_cast<const double*>(x), n, m, splits, accumulate, partial, stream);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// G, keys: workspaces of n·n doubles and n(n−1)/2 uint64.  bandwidth <= 0 selects the median heuristic.
// With no tensor columns at all (has_partial = 0) G is zero.
cudaError_t fb_svgd_finalize_cuda(const double* partial, int64_t splits, int has_partial, int64_t n,
                                  double bandwidth, double* G, unsigned long long* keys, double* K, double* h,
                                  cudaStream_t stream) {
  if (has_partial) {
    const int64_t nn = n * n;
    reduce_kernel<<<static_cast<unsigned>((nn + 255) / 256), 256, 0, stream>>>(partial, splits, n,
                                                                                 16 * gram_r(n), G);
  } else {
    const cudaError_t err = cudaMemsetAsync(G, 0, sizeof(double) * n * n, stream);
    if (err != cudaSuccess) return err;
  }
  finalize_kernel<<<1, kFinalizeThreads, 0, stream>>>(G, n, bandwidth, K, h, keys);
  return cudaGetLastError();
}

cudaError_t fb_svgd_apply_cuda(int dtype, const double* K, const double* h, const void* x, const void* s, void* out,
                               int64_t n, int64_t m, cudaStream_t stream) {
  if (n < 1 || m < 1) return cudaSuccess;
  if (dtype == FB_FLOAT32) {
    launch_apply(K, h, static_cast<const float*>(x), static_cast<const float*>(s), static_cast<float*>(out), n, m,
                 stream);
  } else if (dtype == FB_FLOAT64) {
    launch_apply(K, h, static_cast<const double*>(x), static_cast<const double*>(s), static_cast<double*>(out), n, m,
                 stream);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // extern "C"
