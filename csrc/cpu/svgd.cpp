// CPU ops svgd_kernel_matrix / svgd_apply (spec: fastbayes/reference/svgd.py), and the schemas of both ops.
//
// svgd_kernel_matrix: one pass over every particle tensor [n, m].  The columns are cut into chunks, the chunks
//   into a fixed number of slots that depends only on the shapes (so the result does not depend on the thread
//   count); each slot accumulates its own float64 Gram matrix, the slots are summed in order.  A chunk is processed
//   in tiles of columns copied into a small buffer minus particle 0's values (distances are shift-invariant, the
//   shift removes the cancellation of ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j for particles far from the origin); the tile's
//   Gram block is a register-blocked dot-product kernel (float lanes, summed into double per tile).  D, the
//   median bandwidth and K are then formed in float64 on the tiny n×n matrix.
// svgd_apply: φ = K·Y + diag(c·r)·X with Y = S/n − c·X (c = 2/(h n), r = K·1), one n×n product per column (see
//   apply_tile).  Each tile of columns reads X and S once (to form Y in an L2-resident buffer) and writes φ once.
// float32 uses AVX2+FMA kernels (AVX-512 for the Gram blocks) when the CPU has them, picked at run time; float64
// and other CPUs use portable loops written over fixed lane arrays, which -O3 vectorises without reassociating sums.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <limits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "isa.h"

#ifdef FB_X86_PATHS
#define FB_SVGD_AVX2 1
#endif

namespace fastbayes {
namespace {

constexpr int64_t kChunkCols = 8192;     // columns per chunk of the Gram pass
constexpr int64_t kMaxSlots = 32;        // float64 Gram accumulators of the Gram pass
constexpr int64_t kTileBytes = 1 << 17;  // Gram tile buffer (all n rows) per thread, in L2
constexpr int64_t kApplyTileBytes = 1 << 17;  // the Y buffer of one apply tile (all n rows), in L2

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------------------
// Gram blocks of a centred tile buf[npad][ct] (npad % 4 == 0, ct a multiple of 64 bytes, zero padding): G[i][j] +=
// Σ_c buf[i][c]·buf[j][c] for the blocks covering j >= i (4×2 rows here and in AVX2, 4×4 in AVX-512; G has row
// stride npad).

template <typename T>
void gram_tile_generic(const T* buf, int64_t npad, int64_t ct, double* G) {
  constexpr int L = 32 / sizeof(T);
  for (int64_t ib = 0; ib < npad; ib += 4) {
    for (int64_t jb = ib; jb < npad; jb += 2) {
      T acc[4][2][L] = {};
      for (int64_t c = 0; c < ct; c += L) {
        for (int a = 0; a < 4; ++a) {
          const T* xi = buf + (ib + a) * ct + c;
          for (int b = 0; b < 2; ++b) {
            const T* xj = buf + (jb + b) * ct + c;
            for (int l = 0; l < L; ++l) acc[a][b][l] += xi[l] * xj[l];
          }
        }
      }
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 2; ++b) {
          double s = 0;
          for (int l = 0; l < L; ++l) s += static_cast<double>(acc[a][b][l]);
          G[(ib + a) * npad + jb + b] += s;
        }
    }
  }
}

// x[i][t0 + c] − x[0][t0 + c] into buf[i][c], zero columns [w, ct); returns max |buf| (NaNs ignored, as
// std::max ignores them), which the caller needs for its overflow guard: computed here, in the same pass
template <typename T>
inline T shift_rows(const T* x, int64_t n, int64_t m, int64_t t0, int64_t w, int64_t ct, T* buf) {
  const T* ref = x + t0;
  T amax = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * m + t0;
    T* bi = buf + i * ct;
    for (int64_t c = 0; c < w; ++c) {
      bi[c] = xi[c] - ref[c];
      amax = std::max(amax, std::fabs(bi[c]));
    }
    for (int64_t c = w; c < ct; ++c) bi[c] = T(0);
  }
  return amax;
}

#ifdef FB_SVGD_AVX2
__attribute__((target("avx2,fma"))) inline double hsum_avx2(__m256 v) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  const __m256d s = _mm256_add_pd(lo, hi);
  const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

__attribute__((target("avx2,fma"))) void gram_tile_avx2(const float* buf, int64_t npad, int64_t ct, double* G) {
  for (int64_t ib = 0; ib < npad; ib += 4) {
    const float* x0 = buf + ib * ct;
    const float* x1 = x0 + ct;
    const float* x2 = x1 + ct;
    const float* x3 = x2 + ct;
    for (int64_t jb = ib; jb < npad; jb += 2) {
      const float* y0 = buf + jb * ct;
      const float* y1 = y0 + ct;
      __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
             a31 = a00;
      for (int64_t c = 0; c < ct; c += 8) {
        const __m256 v0 = _mm256_loadu_ps(y0 + c), v1 = _mm256_loadu_ps(y1 + c);
        __m256 u = _mm256_loadu_ps(x0 + c);
        a00 = _mm256_fmadd_ps(u, v0, a00);
        a01 = _mm256_fmadd_ps(u, v1, a01);
        u = _mm256_loadu_ps(x1 + c);
        a10 = _mm256_fmadd_ps(u, v0, a10);
        a11 = _mm256_fmadd_ps(u, v1, a11);
        u = _mm256_loadu_ps(x2 + c);
        a20 = _mm256_fmadd_ps(u, v0, a20);
        a21 = _mm256_fmadd_ps(u, v1, a21);
        u = _mm256_loadu_ps(x3 + c);
        a30 = _mm256_fmadd_ps(u, v0, a30);
        a31 = _mm256_fmadd_ps(u, v1, a31);
      }
      double* g = G + ib * npad + jb;
      g[0] += hsum_avx2(a00);
      g[1] += hsum_avx2(a01);
      g[npad] += hsum_avx2(a10);
      g[npad + 1] += hsum_avx2(a11);
      g[2 * npad] += hsum_avx2(a20);
      g[2 * npad + 1] += hsum_avx2(a21);
      g[3 * npad] += hsum_avx2(a30);
      g[3 * npad + 1] += hsum_avx2(a31);
    }
  }
}

// 4×4 blocks of 16-lane vectors where AVX-512 has the 32 registers for them (1.2-1.3x the AVX2 kernel on Zen 4)
__attribute__((target("avx512f,avx512dq"))) inline double hsum_avx512(__m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

__attribute__((target("avx512f,avx512dq"))) void gram_tile_avx512(const float* buf, int64_t npad, int64_t ct,
                                                                 double* G) {
  for (int64_t ib = 0; ib < npad; ib += 4) {
    const float* x0 = buf + ib * ct;
    for (int64_t jb = ib; jb < npad; jb += 4) {
      const float* y0 = buf + jb * ct;
      __m512 acc[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) acc[a][b] = _mm512_setzero_ps();
      for (int64_t c = 0; c < ct; c += 16) {
        __m512 v[4];
        for (int b = 0; b < 4; ++b) v[b] = _mm512_loadu_ps(y0 + b * ct + c);
        for (int a = 0; a < 4; ++a) {
          const __m512 u = _mm512_loadu_ps(x0 + a * ct + c);
          for (int b = 0; b < 4; ++b) acc[a][b] = _mm512_fmadd_ps(u, v[b], acc[a][b]);
        }
      }
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) G[(ib + a) * npad + jb + b] += hsum_avx512(acc[a][b]);
    }
  }
}

// shift_rows with explicit vectors (the max-abs reduction does not auto-vectorise: std::max's NaN order)
__attribute__((target("avx2,fma"))) float shift_rows_avx2(const float* x, int64_t n, int64_t m, int64_t t0,
                                                         int64_t w, int64_t ct, float* buf) {
  const float* ref = x + t0;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 vmax = _mm256_setzero_ps();
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * m + t0;
    float* bi = buf + i * ct;
    int64_t c = 0;
    for (; c + 8 <= w; c += 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(xi + c), _mm256_loadu_ps(ref + c));
      _mm256_storeu_ps(bi + c, d);
      vmax = _mm256_max_ps(_mm256_andnot_ps(sign, d), vmax);   // a NaN lane keeps vmax (second operand)
    }
    for (; c < w; ++c) {
      bi[c] = xi[c] - ref[c];
      amax = std::max(amax, std::fabs(bi[c]));
    }
    for (; c < ct; ++c) bi[c] = 0.0f;
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  for (float v : lanes) amax = std::max(amax, v);
  return amax;
}

// the shared run-time ISA choice (csrc/cpu/isa.h), so FASTBAYES_CPU_ISA caps this op too
bool use_avx2() { return cpu::best_isa() >= cpu::kAvx2; }

bool use_avx512() { return cpu::best_isa() >= cpu::kAvx512; }
#endif

#ifdef FB_SVGD_AVX2
// n <= 8 on AVX-512: a tile's Gram block straight from x, without the shifted copy in a buffer.  Per 16 columns the
// n − 1 rows minus row 0 are formed in registers (row 0's own products are zero) and the (n−1)·n/2 products i <= j
// accumulate in float lanes over the tile, then into G in double, as the buffered kernels do; the tile's max |x_i − x_0|
// rides along.  Returns false, with G untouched, when that max calls for the overflow guard's rescaling: the caller
// then runs the buffered path on the same tile.  The tail of a tile is loaded under a mask (zeros beyond w).
constexpr int64_t kPrefetch = 1024;  // columns ahead (4 KB a row)

template <int N>
__attribute__((target(FB_AVX512_TARGET))) bool gram_tile_direct_avx512(const float* x, int64_t m, int64_t t0,
                                                                       int64_t w, int64_t ct, int64_t npad,
                                                                       double* G) {
  constexpr int R = N - 1, Q = R * (R + 1) / 2;
  __m512 acc[Q];
#pragma GCC unroll 28
  for (int q = 0; q < Q; ++q) acc[q] = _mm512_setzero_ps();
  const __m512 sign = _mm512_set1_ps(-0.0f);
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t c = 0; c < w; c += 16) {
    const __mmask16 k = c + 16 <= w ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (w - c)) - 1);
    // n rows advance together, one cache line each per step: the hardware prefetchers fall behind on that many
    // interleaved streams, so ask for each row's line kPrefetch columns ahead
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i)
      _mm_prefetch(reinterpret_cast<const char*>(x + i * m + t0 + c + kPrefetch), _MM_HINT_T0);
    const __m512 r = _mm512_maskz_loadu_ps(k, x + t0 + c);
    __m512 d[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      d[i] = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + (i + 1) * m + t0 + c), r);
      vmax = _mm512_max_ps(_mm512_andnot_ps(sign, d[i]), vmax);  // a NaN lane keeps vmax (second operand)
    }
    int q = 0;
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int j = i; j < R; ++j, ++q) acc[q] = _mm512_fmadd_ps(d[i], d[j], acc[q]);
  }
  const float amax = _mm512_reduce_max_ps(vmax);
  const float hi = std::sqrt(std::numeric_limits<float>::max() / static_cast<float>(4 * ct));
  if (std::isfinite(amax) && amax > 0.0f && (amax > hi || amax < 1e-17f)) return false;
  int q = 0;
  for (int i = 0; i < R; ++i)
    for (int j = i; j < R; ++j, ++q) G[(i + 1) * npad + j + 1] += hsum_avx512(acc[q]);
  return true;
}

using DirectGram = bool (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, double*);

DirectGram direct_gram(int64_t n) {
  static constexpr DirectGram table[] = {gram_tile_direct_avx512<2>, gram_tile_direct_avx512<3>,
                                         gram_tile_direct_avx512<4>, gram_tile_direct_avx512<5>,
                                         gram_tile_direct_avx512<6>, gram_tile_direct_avx512<7>,
                                         gram_tile_direct_avx512<8>};
  return n >= 2 && n <= 8 && use_avx512() ? table[n - 2] : nullptr;
}
#endif

template <typename T>
void gram_tile(const T* buf, int64_t npad, int64_t ct, double* G) {
#ifdef FB_SVGD_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx512()) return gram_tile_avx512(buf, npad, ct, G);
    if (use_avx2()) return gram_tile_avx2(buf, npad, ct, G);
  }
#endif
  gram_tile_generic<T>(buf, npad, ct, G);
}

// Adds the Gram matrix of columns [c0, c1) of x [n, m] (shifted by row 0) to G [npad, npad].
template <typename T>
void gram_chunk(const T* x, int64_t n, int64_t m, int64_t c0, int64_t c1, std::vector<T>& buf, double* G) {
  const int64_t npad = round_up(n, 4);
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));  // tile widths: whole vectors of every kernel
  const int64_t ct_max = std::max<int64_t>(L, kTileBytes / static_cast<int64_t>(sizeof(T)) / npad / L * L);
  if (buf.size() < static_cast<size_t>(npad * ct_max)) buf.assign(npad * ct_max, T(0));
  for (int64_t t0 = c0; t0 < c1; t0 += ct_max) {
    const int64_t w = std::min(ct_max, c1 - t0), ct = round_up(w, L);
#ifdef FB_SVGD_AVX2
    if constexpr (std::is_same_v<T, float>) {
      if (const DirectGram direct = direct_gram(n); direct && direct(x, m, t0, w, ct, npad, G)) continue;
    }
#endif
    T amax;
#ifdef FB_SVGD_AVX2
    if constexpr (std::is_same_v<T, float>) {
      amax = use_avx2() ? shift_rows_avx2(x, n, m, t0, w, ct, buf.data())
                        : shift_rows<T>(x, n, m, t0, w, ct, buf.data());
    } else {
      amax = shift_rows<T>(x, n, m, t0, w, ct, buf.data());
    }
#else
    amax = shift_rows<T>(x, n, m, t0, w, ct, buf.data());
#endif
    std::fill(buf.begin() + n * ct, buf.begin() + npad * ct, T(0));  // padded rows
    if constexpr (std::is_same_v<T, float>) {
      // float lanes accumulate products: |x| beyond ~1e17 (or below ~1e-17) would overflow (underflow) them, while
      // the reference works in float64.  Such a tile is scaled by a power of two (exact) and its Gram block added
      // back with the square of that scale, in double.
      const float hi = std::sqrt(std::numeric_limits<float>::max() / static_cast<float>(4 * ct));
      if (std::isfinite(amax) && amax > 0.0f && (amax > hi || amax < 1e-17f)) {
        const int e = std::ilogb(amax);
        const float down = std::ldexp(1.0f, -e);
        for (int64_t i = 0; i < n * ct; ++i) buf[i] *= down;
        std::vector<double> part(static_cast<size_t>(npad * npad), 0.0);
        gram_tile<T>(buf.data(), npad, ct, part.data());
        const double up = std::ldexp(1.0, 2 * e);
        for (int64_t i = 0; i < npad * npad; ++i) G[i] += up * part[i];
        continue;
      }
    }
    gram_tile<T>(buf.data(), npad, ct, G);
  }
}

void check_particle(const at::Tensor& x, int64_t k, int64_t n, const at::Tensor& first) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "particles[", k, "] must be a CPU tensor for the CPU kernel, got ",
                    x.device());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "particles[", k,
                    "] must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(0) == n, "particles[", k, "] must have n = ", n,
                    " particles in dim 0, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == first.device(), "particles must be on one device");
}

// ---------------------------------------------------------------------------------------------------------
// D, h and K from the float64 Gram matrix (upper triangle valid, row stride npad).

double median_bandwidth(const std::vector<double>& D, int64_t n) {
  std::vector<double> v;
  v.reserve(n * (n - 1) / 2);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) v.push_back(D[i * n + j]);
  const int64_t m = static_cast<int64_t>(v.size()), k = (m - 1) / 2;
  std::nth_element(v.begin(), v.begin() + k, v.end());
  const double lo = v[k];
  const double hi = (m % 2 == 0) ? *std::min_element(v.begin() + k + 1, v.end()) : lo;
  double med = 0.5 * (lo + hi);
  if (!(med > 0)) med = *std::max_element(v.begin(), v.end());
  return med > 0 ? med / std::log(static_cast<double>(n + 1)) : 1.0;
}

std::tuple<at::Tensor, at::Tensor> finalize(const std::vector<double>& G, int64_t n, int64_t npad,
                                            std::optional<double> bandwidth, const at::Tensor& like) {
  std::vector<double> D(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) {
      const double d = std::max(0.0, G[i * npad + i] + G[j * npad + j] - 2.0 * G[i * npad + j]);
      D[i * n + j] = D[j * n + i] = d;
    }
  const double h = bandwidth ? *bandwidth : median_bandwidth(D, n);
  at::Tensor K = at::empty({n, n}, like.options().dtype(at::kDouble));
  double* kp = K.mutable_data_ptr<double>();
  for (int64_t i = 0; i < n * n; ++i) kp[i] = std::exp(-D[i] / h);
  return {K, at::scalar_tensor(h, like.options().dtype(at::kDouble))};
}

std::tuple<at::Tensor, at::Tensor> svgd_kernel_matrix_cpu(at::TensorList particles,
                                                          std::optional<double> bandwidth) {
  TORCH_CHECK_VALUE(!particles.empty(), "particles must be a non-empty list of tensors");
  const at::Tensor& first = particles[0];
  TORCH_CHECK_VALUE(first.dim() >= 1, "particles[0] must have a leading particle dimension");
  const int64_t n = first.size(0);
  TORCH_CHECK_VALUE(n >= 2, "particles must hold at least n = 2 particles along dim 0, got n = ", n);
  if (bandwidth) {
    TORCH_CHECK_VALUE(std::isfinite(*bandwidth) && *bandwidth > 0, "bandwidth must be positive and finite, got ",
                      *bandwidth);
  }
  std::vector<at::Tensor> xs;
  struct Chunk {
    int64_t t, c0, c1;
  };
  std::vector<Chunk> chunks;
  for (size_t k = 0; k < particles.size(); ++k) {
    check_particle(particles[k], static_cast<int64_t>(k), n, first);
    xs.push_back(particles[k].contiguous());
    const int64_t m = xs.back().numel() / n;
    for (int64_t c = 0; c < m; c += kChunkCols)
      chunks.push_back({static_cast<int64_t>(k), c, std::min(m, c + kChunkCols)});
  }
  const int64_t npad = round_up(n, 4);
  const int64_t C = static_cast<int64_t>(chunks.size());
  const int64_t P = std::max<int64_t>(1, std::min(kMaxSlots, C));
  std::vector<double> partial(P * npad * npad, 0.0);
  at::parallel_for(0, P, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> fbuf;
    std::vector<double> dbuf;
    for (int64_t s = lo; s < hi; ++s) {
      double* G = partial.data() + s * npad * npad;
      for (int64_t c = s * C / P; c < (s + 1) * C / P; ++c) {
        const Chunk& ch = chunks[c];
        const at::Tensor& x = xs[ch.t];
        const int64_t m = x.numel() / n;
        if (x.scalar_type() == at::kFloat) {
          gram_chunk<float>(x.const_data_ptr<float>(), n, m, ch.c0, ch.c1, fbuf, G);
        } else {
          gram_chunk<double>(x.const_data_ptr<double>(), n, m, ch.c0, ch.c1, dbuf, G);
        }
      }
    }
  });
  std::vector<double> G(npad * npad, 0.0);
  for (int64_t s = 0; s < P; ++s)
    for (int64_t i = 0; i < npad * npad; ++i) G[i] += partial[s * npad * npad + i];
  return finalize(G, n, npad, bandwidth, first);
}

// ---------------------------------------------------------------------------------------------------------
// φ = K·Y + diag(c·r)·X with Y = S/n − c·X, c = 2/(h n), r = K·1: the reference's
// (K·S + (2/h)(diag(K1)·X − K·X))/n regrouped so that one n×n product per column remains instead of two.
// A tile of columns is first written as Y into a row-major buffer whose row stride is padded by one cache line
// (X's and S's rows lie m elements apart, usually a multiple of 4 KB, which maps all n rows onto one L1 set);
// then 16 columns (float) × 4 rows of φ are accumulated in registers over all n particles, with K packed as
// KP[npad/4][n][4] so the four coefficients of a step are adjacent, and the diagonal term is added at the end.

template <typename T>
constexpr int64_t strip_width() {
  return 64 / static_cast<int64_t>(sizeof(T));  // one cache line
}

struct ApplyCoef {
  int64_t n, npad;
  double inv_n, c;
};

template <typename T>
inline void make_y(const T* X, const T* S, const ApplyCoef& k, int64_t m, int64_t c0, int64_t w, int64_t ld, T* Y) {
  const T inv_n = static_cast<T>(k.inv_n), c = static_cast<T>(k.c);
  for (int64_t j = 0; j < k.n; ++j) {
    const T* s = S + j * m + c0;
    const T* x = X + j * m + c0;
    T* y = Y + j * ld;
    for (int64_t v = 0; v < w; ++v) y[v] = s[v] * inv_n - c * x[v];
  }
}

template <typename T>
void apply_strips_generic(const T* KP, const T* cr, const ApplyCoef& k, const T* Y, int64_t ld, int64_t strips,
                          const T* X, T* P, int64_t m, int64_t c0) {
  constexpr int64_t V = strip_width<T>();
  const int64_t n = k.n;
  for (int64_t q = 0; q < strips; ++q) {
    for (int64_t ib = 0; ib < k.npad; ib += 4) {
      T acc[4][V] = {};
      const T* kp = KP + ib * n;
      const T* y = Y + q * V;
      for (int64_t j = 0; j < n; ++j, kp += 4, y += ld)
        for (int a = 0; a < 4; ++a)
          for (int64_t v = 0; v < V; ++v) acc[a][v] += kp[a] * y[v];
      for (int a = 0; a < 4 && ib + a < n; ++a) {
        const T* x = X + (ib + a) * m + c0 + q * V;
        T* out = P + (ib + a) * m + c0 + q * V;
        for (int64_t v = 0; v < V; ++v) out[v] = acc[a][v] + cr[ib + a] * x[v];
      }
    }
  }
}

// columns [c0, c1) straight from X and S (the last < V columns of a row)
template <typename T>
void apply_cols_scalar(const T* KP, const T* cr, const ApplyCoef& k, const T* X, const T* S, T* P, int64_t m,
                       int64_t c0, int64_t c1) {
  const T inv_n = static_cast<T>(k.inv_n), c = static_cast<T>(k.c);
  const int64_t n = k.n;
  for (int64_t ib = 0; ib < k.npad; ib += 4)
    for (int64_t col = c0; col < c1; ++col) {
      T acc[4] = {};
      const T* kp = KP + ib * n;
      for (int64_t j = 0; j < n; ++j, kp += 4) {
        const T y = S[j * m + col] * inv_n - c * X[j * m + col];
        for (int a = 0; a < 4; ++a) acc[a] += kp[a] * y;
      }
      for (int a = 0; a < 4 && ib + a < n; ++a) P[(ib + a) * m + col] = acc[a] + cr[ib + a] * X[(ib + a) * m + col];
    }
}

#ifdef FB_SVGD_AVX2
// make_y compiled for AVX2 (the translation unit's baseline is SSE2: half the width, no FMA)
__attribute__((target("avx2,fma"))) void make_y_avx2(const float* X, const float* S, const ApplyCoef& k, int64_t m,
                                                    int64_t c0, int64_t w, int64_t ld, float* Y) {
  make_y<float>(X, S, k, m, c0, w, ld, Y);
}

__attribute__((target("avx2,fma"))) void apply_strips_avx2(const float* KP, const float* cr, const ApplyCoef& k,
                                                          const float* Y, int64_t ld, int64_t strips,
                                                          const float* X, float* P, int64_t m, int64_t c0) {
  const int64_t n = k.n;
  for (int64_t q = 0; q < strips; ++q) {
    for (int64_t ib = 0; ib < k.npad; ib += 4) {
      __m256 p00 = _mm256_setzero_ps(), p01 = p00, p10 = p00, p11 = p00, p20 = p00, p21 = p00, p30 = p00,
             p31 = p00;
      const float* kp = KP + ib * n;
      const float* y = Y + q * 16;
      for (int64_t j = 0; j < n; ++j, kp += 4, y += ld) {
        const __m256 y0 = _mm256_loadu_ps(y), y1 = _mm256_loadu_ps(y + 8);
        __m256 kv = _mm256_broadcast_ss(kp);
        p00 = _mm256_fmadd_ps(kv, y0, p00);
        p01 = _mm256_fmadd_ps(kv, y1, p01);
        kv = _mm256_broadcast_ss(kp + 1);
        p10 = _mm256_fmadd_ps(kv, y0, p10);
        p11 = _mm256_fmadd_ps(kv, y1, p11);
        kv = _mm256_broadcast_ss(kp + 2);
        p20 = _mm256_fmadd_ps(kv, y0, p20);
        p21 = _mm256_fmadd_ps(kv, y1, p21);
        kv = _mm256_broadcast_ss(kp + 3);
        p30 = _mm256_fmadd_ps(kv, y0, p30);
        p31 = _mm256_fmadd_ps(kv, y1, p31);
      }
      const __m256 lo[4] = {p00, p10, p20, p30}, hi[4] = {p01, p11, p21, p31};
      for (int a = 0; a < 4 && ib + a < n; ++a) {
        const float* x = X + (ib + a) * m + c0 + q * 16;
        float* out = P + (ib + a) * m + c0 + q * 16;
        const __m256 d = _mm256_broadcast_ss(cr + ib + a);
        _mm256_storeu_ps(out, _mm256_fmadd_ps(d, _mm256_loadu_ps(x), lo[a]));
        _mm256_storeu_ps(out + 8, _mm256_fmadd_ps(d, _mm256_loadu_ps(x + 8), hi[a]));
      }
    }
  }
}
#endif

#ifdef FB_SVGD_AVX2
// n <= 8 on AVX-512: one pass straight from X and S, no Y buffer.  A 16-column strip keeps the n rows of x and the n
// accumulators in registers (2n + 1 of the 32 zmm), forms y_j = s_j/n − c·x_j on the fly and adds K_ij·y_j in the
// tiled kernels' order (j ascending from zero, then c·r_i·x_i); φ goes out with streaming stores where its row is
// 64-byte aligned, which skips the read-for-ownership of a fresh allocation (a quarter of the pass's traffic).
template <int N>
__attribute__((target(FB_AVX512_TARGET))) void apply_direct_avx512(const float* Kf, const float* cr, float inv_n,
                                                                   float c, const float* X, const float* S, float* P,
                                                                   int64_t m, int64_t c0, int64_t c1) {
  const __m512 vinv = _mm512_set1_ps(inv_n), vc = _mm512_set1_ps(c);
  bool aligned = true;
  for (int i = 0; i < N; ++i) aligned = aligned && (reinterpret_cast<uintptr_t>(P + i * m + c0) & 63) == 0;
  for (int64_t col = c0; col + 16 <= c1; col += 16) {
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) {  // 2n read streams in step: prefetch as the Gram pass does
      _mm_prefetch(reinterpret_cast<const char*>(X + j * m + col + kPrefetch), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(S + j * m + col + kPrefetch), _MM_HINT_T0);
    }
    __m512 x[N], acc[N];
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) {
      x[j] = _mm512_loadu_ps(X + j * m + col);
      const __m512 y = _mm512_fnmadd_ps(vc, x[j], _mm512_mul_ps(_mm512_loadu_ps(S + j * m + col), vinv));
#pragma GCC unroll 8
      for (int i = 0; i < N; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(Kf[i * N + j]), y, acc[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      const __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(cr[i]), x[i], acc[i]);
      if (aligned) {
        _mm512_stream_ps(P + i * m + col, v);
      } else {
        _mm512_storeu_ps(P + i * m + col, v);
      }
    }
  }
  if (aligned) _mm_sfence();
}

using DirectApply = void (*)(const float*, const float*, float, float, const float*, const float*, float*, int64_t,
                             int64_t, int64_t);

DirectApply direct_apply(int64_t n) {
  static constexpr DirectApply table[] = {apply_direct_avx512<1>, apply_direct_avx512<2>, apply_direct_avx512<3>,
                                          apply_direct_avx512<4>, apply_direct_avx512<5>, apply_direct_avx512<6>,
                                          apply_direct_avx512<7>, apply_direct_avx512<8>};
  return n >= 1 && n <= 8 && use_avx512() ? table[n - 1] : nullptr;
}
#endif

template <typename T>
void apply_tile(const T* KP, const T* cr, const ApplyCoef& k, const T* X, const T* S, T* P, int64_t m, int64_t c0,
                int64_t c1, std::vector<T>& ybuf) {
  constexpr int64_t V = strip_width<T>();
  const int64_t strips = (c1 - c0) / V, w = strips * V, ld = w + V;
  if (strips > 0) {
    ybuf.resize(k.n * ld);
#ifdef FB_SVGD_AVX2
    if constexpr (std::is_same_v<T, float>) {
      if (use_avx2()) {
        make_y_avx2(X, S, k, m, c0, w, ld, ybuf.data());
        apply_strips_avx2(KP, cr, k, ybuf.data(), ld, strips, X, P, m, c0);
      } else {
        make_y<T>(X, S, k, m, c0, w, ld, ybuf.data());
        apply_strips_generic<T>(KP, cr, k, ybuf.data(), ld, strips, X, P, m, c0);
      }
    } else {
      make_y<T>(X, S, k, m, c0, w, ld, ybuf.data());
      apply_strips_generic<T>(KP, cr, k, ybuf.data(), ld, strips, X, P, m, c0);
    }
#else
    make_y<T>(X, S, k, m, c0, w, ld, ybuf.data());
    apply_strips_generic<T>(KP, cr, k, ybuf.data(), ld, strips, X, P, m, c0);
#endif
  }
  if (c0 + w < c1) apply_cols_scalar<T>(KP, cr, k, X, S, P, m, c0 + w, c1);
}

// φ is a fresh allocation written once: its first touch page-faults every 4 KB page, which costs as much as the
// whole pass at a few MB and more (about 50 ms for 128 MB here).  Where the kernel leaves transparent huge pages to
// madvise (the common default), asking for them cuts that cost about threefold; elsewhere this is a no-op.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t hi = lo + static_cast<uintptr_t>(t.nbytes());
  const uintptr_t a = (lo + kHuge - 1) & ~(kHuge - 1), b = hi & ~(kHuge - 1);
  if (b > a + kHuge) madvise(reinterpret_cast<void*>(a), b - a, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// The one-pass apply (direct_apply) where it runs (float, n <= 8, AVX-512), from K (`kd`, float64 row by row) and
// the packed copies the tiled path uses: false, with nothing written, elsewhere.
template <typename T>
bool apply_direct(const double* kd, const T* KPt, const T* crt, const ApplyCoef& k, const T* xp, const T* sp, T* op,
                  int64_t m) {
#ifdef FB_SVGD_AVX2
  if constexpr (std::is_same_v<T, float>) {
    const DirectApply fn = direct_apply(k.n);
    if (!fn) return false;
    const std::vector<float> Kf(kd, kd + k.n * k.n);  // rounded to float
    const int64_t full = m / 16 * 16;
    // column blocks of 4096: a fixed split, so the result does not depend on the thread count
    at::parallel_for(0, (full + 4095) / 4096, 1, [&](int64_t lo, int64_t hi) {
      fn(Kf.data(), crt, static_cast<float>(k.inv_n), static_cast<float>(k.c), xp, sp, op, m, lo * 4096,
         std::min(full, hi * 4096));
    });
    if (full < m) apply_cols_scalar<float>(KPt, crt, k, xp, sp, op, m, full, m);
    return true;
  }
#endif
  return false;
}

at::Tensor svgd_apply_cpu(const at::Tensor& K_in, const at::Tensor& h_in, const at::Tensor& x_in,
                          const at::Tensor& score_in) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have a leading particle dimension");
  const int64_t n = x_in.size(0);
  TORCH_CHECK_VALUE(n >= 1, "x must hold at least one particle");
  TORCH_CHECK_VALUE(K_in.dim() == 2 && K_in.size(0) == n && K_in.size(1) == n, "K must be [n, n] = [", n, ", ", n,
                    "], got ", K_in.sizes());
  TORCH_CHECK_VALUE(K_in.is_floating_point() && h_in.is_floating_point(), "K and h must be floating-point");
  TORCH_CHECK_VALUE(h_in.numel() == 1, "h must hold one value, got shape ", h_in.sizes());
  TORCH_CHECK_VALUE(score_in.sizes() == x_in.sizes(), "score must have the shape of x ", x_in.sizes(), ", got ",
                    score_in.sizes());
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                    "x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(score_in.scalar_type() == x_in.scalar_type(), "score must have the dtype of x (",
                    x_in.scalar_type(), "), got ", score_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.device().is_cpu() && score_in.device().is_cpu() && K_in.device().is_cpu() &&
                        h_in.device().is_cpu(),
                    "K, h, x and score must be CPU tensors for the CPU kernel");
  const at::Tensor K = K_in.to(at::kDouble).contiguous();
  const double h = h_in.to(at::kDouble).item<double>();
  TORCH_CHECK_VALUE(std::isfinite(h) && h > 0, "h must be positive and finite, got ", h);
  const at::Tensor X = x_in.contiguous(), S = score_in.contiguous();
  at::Tensor out = at::empty_like(X);
  const int64_t m = X.numel() / n;
  if (m == 0) return out;
  advise_huge_pages(out);
  const ApplyCoef k{n, round_up(n, 4), 1.0 / static_cast<double>(n), 2.0 / (h * static_cast<double>(n))};
  // K packed by four rows and c·r_i, in float64 then rounded once to x's dtype (padded rows zero)
  const double* kd = K.const_data_ptr<double>();
  std::vector<double> KP(k.npad * n, 0.0), cr(k.npad, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double r = 0;
    for (int64_t j = 0; j < n; ++j) {
      r += kd[i * n + j];
      KP[((i / 4) * n + j) * 4 + i % 4] = kd[i * n + j];
    }
    cr[i] = k.c * r;
  }
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "svgd_apply_cpu", [&] {
    const std::vector<scalar_t> KPt(KP.begin(), KP.end()), crt(cr.begin(), cr.end());
    const scalar_t* xp = X.const_data_ptr<scalar_t>();
    const scalar_t* sp = S.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (apply_direct<scalar_t>(kd, KPt.data(), crt.data(), k, xp, sp, op, m)) return;
    constexpr int64_t V = strip_width<scalar_t>();
    const int64_t tile = std::max<int64_t>(V, kApplyTileBytes / (n * static_cast<int64_t>(sizeof(scalar_t))) / V * V);
    const int64_t tiles = (m + tile - 1) / tile;
    at::parallel_for(0, tiles, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> ybuf;
      for (int64_t t = lo; t < hi; ++t)
        apply_tile<scalar_t>(KPt.data(), crt.data(), k, xp, sp, op, m, t * tile, std::min(m, (t + 1) * tile), ybuf);
    });
  });
  return out;
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_FRAGMENT(fastbayes_C, m) {
  m.def("svgd_kernel_matrix(Tensor[] particles, float? bandwidth) -> (Tensor, Tensor)");
  m.def("svgd_apply(Tensor K, Tensor h, Tensor x, Tensor score) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastbayes_C, CPU, m) {
  m.impl("svgd_kernel_matrix", &fastbayes::svgd_kernel_matrix_cpu);
  m.impl("svgd_apply", &fastbayes::svgd_apply_cpu);
}
