// Loads and stores of the four parameter dtypes as double, and the launch helpers of the .cu files.
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
