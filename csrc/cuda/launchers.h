// C-ABI launchers of the torch-free CUDA kernels (gate_stats.cu, special.cu), called by ops_cuda.cpp.
// Pointers are contiguous device arrays of `n` elements, each in the dtype its code (FbDtype) names; the
// gate statistics read every input as double, so the dtypes may differ as in the reference.  Every
// launcher enqueues on `stream` and returns cudaGetLastError() (cudaErrorInvalidValue for a bad dtype).
#pragma once
#include <cuda_runtime_api.h>

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum FbDtype { FB_FLOAT32 = 0, FB_FLOAT64 = 1, FB_FLOAT16 = 2, FB_BFLOAT16 = 3 };

// kl, mean, snr in mu's dtype
cudaError_t fb_gate_stats_cuda(const void* mu, int mu_dtype, const void* log_sigma, int log_sigma_dtype, void* kl,
                               void* mean, void* snr, int64_t n, double a, double b, cudaStream_t stream);
// dmu in mu's dtype, dlog_sigma in log_sigma's
cudaError_t fb_gate_stats_backward_cuda(const void* grad_kl, int grad_dtype, const void* mu, int mu_dtype,
                                        const void* log_sigma, int log_sigma_dtype, void* dmu, void* dlog_sigma,
                                        int64_t n, double a, double b, cudaStream_t stream);
// elementwise, out in the input's dtype
cudaError_t fb_log_ndtr_cuda(int dtype, const void* x, void* out, int64_t n, cudaStream_t stream);
cudaError_t fb_ndtri_log_cuda(int dtype, const void* logp, void* out, int64_t n, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
