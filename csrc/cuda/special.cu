// CUDA kernels for the elementwise special functions of fastbayes/math.h (log_ndtr in float64;
// ndtri_log in float for 32/16-bit inputs, double for float64), mirroring csrc/cpu/special.cpp.
#include <type_traits>

#include "dtype_io.cuh"
#include "fastbayes/math.h"

namespace fastbayes {
namespace cuda {
namespace {

template <typename T>
__global__ void log_ndtr_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n) {
  FB_GRID_STRIDE(i, n) { out[i] = Io<T>::store(log_ndtr(Io<T>::load(x[i]))); }
}

template <typename T>
__global__ void ndtri_log_kernel(const T* __restrict__ logp, T* __restrict__ out, int64_t n) {
  FB_GRID_STRIDE(i, n) {
    if constexpr (std::is_same_v<T, double>) {
      out[i] = ndtri_log<double>(logp[i]);
    } else {
      // the 16-bit -> float conversion is exact, so the load through double changes nothing
      out[i] = Io<T>::store(ndtri_log<float>(static_cast<float>(Io<T>::load(logp[i]))));
    }
  }
}

}  // namespace
}  // namespace cuda
}  // namespace fastbayes

extern "C" cudaError_t fb_log_ndtr_cuda(int dtype, const void* x, void* out, int64_t n, cudaStream_t stream) {
  return fastbayes::cuda::dispatch_dtype(dtype, n, [&](auto tag) {
    using T = decltype(tag);
    fastbayes::cuda::log_ndtr_kernel<T><<<fastbayes::cuda::grid_for(n), fastbayes::cuda::kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(out), n);
  });
}

extern "C" cudaError_t fb_ndtri_log_cuda(int dtype, const void* logp, void* out, int64_t n, cudaStream_t stream) {
  return fastbayes::cuda::dispatch_dtype(dtype, n, [&](auto tag) {
    using T = decltype(tag);
    fastbayes::cuda::ndtri_log_kernel<T><<<fastbayes::cuda::grid_for(n), fastbayes::cuda::kThreads, 0, stream>>>(
        static_cast<const T*>(logp), static_cast<T*>(out), n);
  });
}
