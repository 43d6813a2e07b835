// The dtype layer shared by every .cu: Io (the four dtypes as double, for the per-unit float64 code), Elem (element
// storage <-> math type, float or double for float64, and a same-size bit type), 16-byte vector access (Pack,
// load_lanes / store_lanes), the 32-bit divider, and the launch helpers.  Dtype codes are launchers.h's FbDtype.
// Conversions are explicit intrinsics: torch builds .cu files with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__.  Stores round double -> float -> 16-bit like Tensor.to(dtype).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include "launchers.h"

namespace fastbayes {
namespace cuda {

template <typename T>
struct Io;
template <>
struct Io<float> {
  static __device__ __forceinline__ double load(float x) { return x; }
  static __device__ __forceinline__ float store(double x) { return static_cast<float>(x); }
};
template <>
struct Io<double> {
  static __device__ __forceinline__ double load(double x) { return x; }
  static __device__ __forceinline__ double store(double x) { return x; }
};
template <>
struct Io<__half> {
  static __device__ __forceinline__ double load(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half store(double x) { return __float2half_rn(static_cast<float>(x)); }
};
template <>
struct Io<__nv_bfloat16> {
  static __device__ __forceinline__ double load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 store(double x) {
    return __float2bfloat16_rn(static_cast<float>(x));
  }
};

// Element storage <-> math type T (float; double for float64) and a bit type B of the element's size.
template <typename X>
struct Elem;
template <>
struct Elem<float> {
  using T = float;
  using B = uint32_t;
  static __device__ __forceinline__ float ld(float v) { return v; }
  static __device__ __forceinline__ float st(float v) { return v; }
};
template <>
struct Elem<double> {
  using T = double;
  using B = unsigned long long;
  static __device__ __forceinline__ double ld(double v) { return v; }
  static __device__ __forceinline__ double st(double v) { return v; }
};
template <>
struct Elem<__half> {
  using T = float;
  using B = uint16_t;
  static __device__ __forceinline__ float ld(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half st(float v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  using T = float;
  using B = uint16_t;
  static __device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 st(float v) { return __float2bfloat16_rn(v); }
};

// n / d for n < 2^31 by a multiply-high (PyTorch's IntDivider) instead of a ~20-instruction 32-bit division (or
// a ~60-instruction 64-bit one).  d >= 1.
struct Div32 {
  uint32_t d, m, s;
  Div32() = default;
  __host__ explicit Div32(uint32_t divisor) : d(divisor) {
    s = 0;
    while (s < 32 && (uint64_t{1} << s) < divisor) ++s;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - divisor)) / divisor + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

// V consecutive elements as one aligned access: 16 bytes when V = 16 / sizeof(X), several 16-byte accesses for a
// wider X (a float grad next to 16-bit x), less for a narrower one.  The caller checks the base pointer's alignment
// (pack_aligned) and that e0 is a multiple of V.
template <typename X, int V>
struct alignas((V * sizeof(X)) < 16 ? (V * sizeof(X)) : 16) Pack {
  X v[V];
};

template <typename X, int V>
inline bool pack_aligned(const void* p) {
  constexpr size_t a = (V * sizeof(X)) < 16 ? (V * sizeof(X)) : 16;
  return reinterpret_cast<uintptr_t>(p) % a == 0;
}

// p[e0 .. e0+V) converted to the math type T (a float64 value to float rounds to nearest, as Tensor.to does): one
// vector access when `vec`, else lane by lane for the first `nvalid` lanes (the others read as 0).
template <typename X, int V, typename T>
__device__ __forceinline__ void load_lanes(const X* __restrict__ p, int64_t e0, bool vec, int nvalid, T (&out)[V]) {
  if (vec) {
    const Pack<X, V> pk = *reinterpret_cast<const Pack<X, V>*>(p + e0);
#pragma unroll
    for (int l = 0; l < V; ++l) out[l] = static_cast<T>(Elem<X>::ld(pk.v[l]));
  } else {
#pragma unroll
    for (int l = 0; l < V; ++l) out[l] = l < nvalid ? static_cast<T>(Elem<X>::ld(p[e0 + l])) : T(0);
  }
}

// The same for a pointer whose dtype is a runtime FbDtype code (uniform across the grid: no divergence).
template <int V, typename T>
__device__ __forceinline__ void load_lanes_any(const void* p, int dtype, int64_t e0, bool vec, int nvalid,
                                               T (&out)[V]) {
  switch (dtype) {
    case FB_FLOAT32: load_lanes<float, V>(static_cast<const float*>(p), e0, vec, nvalid, out); break;
    case FB_FLOAT64: load_lanes<double, V>(static_cast<const double*>(p), e0, vec, nvalid, out); break;
    case FB_FLOAT16: load_lanes<__half, V>(static_cast<const __half*>(p), e0, vec, nvalid, out); break;
    default: load_lanes<__nv_bfloat16, V>(static_cast<const __nv_bfloat16*>(p), e0, vec, nvalid, out); break;
  }
}

template <int V>
inline bool pack_aligned_any(const void* p, int dtype) {
  switch (dtype) {
    case FB_FLOAT32: return pack_aligned<float, V>(p);
    case FB_FLOAT64: return pack_aligned<double, V>(p);
    default: return pack_aligned<__half, V>(p);
  }
}

// v[0 .. nvalid) rounded to X and stored at p + e0 (one vector access when `vec`).
template <typename X, int V, typename T>
__device__ __forceinline__ void store_lanes(X* __restrict__ p, int64_t e0, bool vec, int nvalid, const T (&v)[V]) {
  using M = typename Elem<X>::T;
  if (vec) {
    Pack<X, V> pk;
#pragma unroll
    for (int l = 0; l < V; ++l) pk.v[l] = Elem<X>::st(static_cast<M>(v[l]));
    *reinterpret_cast<Pack<X, V>*>(p + e0) = pk;
  } else {
#pragma unroll
    for (int l = 0; l < V; ++l)
      if (l < nvalid) p[e0 + l] = Elem<X>::st(static_cast<M>(v[l]));
  }
}

// Runtime-dtype access for the per-unit kernels: the switch is uniform across the grid (no divergence),
// costs nothing next to the float64 math, and lets one kernel serve every mix of dtypes.
__device__ __forceinline__ double load_any(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case FB_FLOAT64: return static_cast<const double*>(p)[i];
    case FB_FLOAT32: return static_cast<const float*>(p)[i];
    case FB_FLOAT16: return Io<__half>::load(static_cast<const __half*>(p)[i]);
    default: return Io<__nv_bfloat16>::load(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

__device__ __forceinline__ void store_any(void* p, int dtype, int64_t i, double v) {
  switch (dtype) {
    case FB_FLOAT64: static_cast<double*>(p)[i] = v; break;
    case FB_FLOAT32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case FB_FLOAT16: static_cast<__half*>(p)[i] = Io<__half>::store(v); break;
    default: static_cast<__nv_bfloat16*>(p)[i] = Io<__nv_bfloat16>::store(v); break;
  }
}

inline bool valid_dtype(int dtype) { return dtype >= FB_FLOAT32 && dtype <= FB_BFLOAT16; }

// One thread per element, grid-stride beyond 65535 blocks.  The per-unit math is a few hundred float64
// operations, so small blocks keep more SMs busy for the typical few thousand units.
constexpr int kThreads = 128;

inline unsigned int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < 65535 ? blocks : 65535);
}

// Calls f(T{}) for the dtype code, then reports the launch status.
template <typename F>
cudaError_t dispatch_dtype(int dtype, int64_t n, F&& f) {
  if (!valid_dtype(dtype)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case FB_FLOAT32: f(float{}); break;
    case FB_FLOAT64: f(double{}); break;
    case FB_FLOAT16: f(__half{}); break;
    default: f(__nv_bfloat16{}); break;
  }
  return cudaGetLastError();
}

#define FB_GRID_STRIDE(i, n)                                                                  \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

}  // namespace cuda
}  // namespace fastbayes
