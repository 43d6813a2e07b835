// CUDA kernels for the per-unit gate statistics: one thread per unit evaluating fastbayes/math.h in
// float64 (the same code as the CPU ops), inputs of any float dtype read as double.  Torch-free;
// ops_cuda.cpp does the tensor glue.
#include "dtype_io.cuh"
#include "fastbayes/math.h"

namespace fastbayes {
namespace cuda {
namespace {

__global__ void gate_stats_kernel(const void* mu, int mu_t, const void* log_sigma, int ls_t, void* kl, void* mean,
                                  void* snr, int64_t n, double a, double b) {
  FB_GRID_STRIDE(i, n) {
    const GateStats s = gate_stats(load_any(mu, mu_t, i), load_any(log_sigma, ls_t, i), a, b);
    store_any(kl, mu_t, i, s.kl);
    store_any(mean, mu_t, i, s.mean);
    store_any(snr, mu_t, i, s.snr);
  }
}

__global__ void gate_stats_backward_kernel(const void* grad_kl, int g_t, const void* mu, int mu_t,
                                           const void* log_sigma, int ls_t, void* dmu, void* dlog_sigma, int64_t n,
                                           double a, double b) {
  FB_GRID_STRIDE(i, n) {
    const GateGrad d =
        gate_stats_backward(load_any(grad_kl, g_t, i), load_any(mu, mu_t, i), load_any(log_sigma, ls_t, i), a, b);
    store_any(dmu, mu_t, i, d.dmu);
    store_any(dlog_sigma, ls_t, i, d.dlog_sigma);
  }
}

cudaError_t finish(int64_t n) { return n == 0 ? cudaSuccess : cudaGetLastError(); }

}  // namespace
}  // namespace cuda
}  // namespace fastbayes

using fastbayes::cuda::grid_for;
using fastbayes::cuda::kThreads;
using fastbayes::cuda::valid_dtype;

extern "C" cudaError_t fb_gate_stats_cuda(const void* mu, int mu_dtype, const void* log_sigma, int log_sigma_dtype,
                                          void* kl, void* mean, void* snr, int64_t n, double a, double b,
                                          cudaStream_t stream) {
  if (!valid_dtype(mu_dtype) || !valid_dtype(log_sigma_dtype)) return cudaErrorInvalidValue;
  if (n > 0) {
    fastbayes::cuda::gate_stats_kernel<<<grid_for(n), kThreads, 0, stream>>>(mu, mu_dtype, log_sigma,
                                                                             log_sigma_dtype, kl, mean, snr, n, a, b);
  }
  return fastbayes::cuda::finish(n);
}

extern "C" cudaError_t fb_gate_stats_backward_cuda(const void* grad_kl, int grad_dtype, const void* mu, int mu_dtype,
                                                   const void* log_sigma, int log_sigma_dtype, void* dmu,
                                                   void* dlog_sigma, int64_t n, double a, double b,
                                                   cudaStream_t stream) {
  if (!valid_dtype(grad_dtype) || !valid_dtype(mu_dtype) || !valid_dtype(log_sigma_dtype)) {
    return cudaErrorInvalidValue;
  }
  if (n > 0) {
    fastbayes::cuda::gate_stats_backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(
        grad_kl, grad_dtype, mu, mu_dtype, log_sigma, log_sigma_dtype, dmu, dlog_sigma, n, a, b);
  }
  return fastbayes::cuda::finish(n);
}
