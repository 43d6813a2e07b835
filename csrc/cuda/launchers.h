// The C-ABI launchers of every torch-free CUDA source (csrc/cuda/*.cu), declared once here and included by both
// the .cu that defines them and the *_ops.cpp / ops_cuda.cpp glue that calls them.  Pointers are contiguous device
// arrays, each in the dtype its code (FbDtype) names.  Every launcher enqueues on `stream` and returns the launch
// status (cudaGetLastError(); cudaErrorInvalidValue for a bad dtype code).
#pragma once
#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The one dtype code of the C ABI (the glue maps at::ScalarType to it).
enum FbDtype { FB_FLOAT32 = 0, FB_FLOAT64 = 1, FB_FLOAT16 = 2, FB_BFLOAT16 = 3 };

// gate_stats.cu: `n` units; the gate statistics read every input as double, so the dtypes may differ as in the
// reference.
// kl, mean, snr in mu's dtype
cudaError_t fb_gate_stats_cuda(const void* mu, int mu_dtype, const void* log_sigma, int log_sigma_dtype, void* kl,
                               void* mean, void* snr, int64_t n, double a, double b, cudaStream_t stream);
// dmu in mu's dtype, dlog_sigma in log_sigma's
cudaError_t fb_gate_stats_backward_cuda(const void* grad_kl, int grad_dtype, const void* mu, int mu_dtype,
                                        const void* log_sigma, int log_sigma_dtype, void* dmu, void* dlog_sigma,
                                        int64_t n, double a, double b, cudaStream_t stream);
// special.cu: elementwise over n elements, out in the input's dtype
cudaError_t fb_log_ndtr_cuda(int dtype, const void* x, void* out, int64_t n, cudaStream_t stream);
cudaError_t fb_ndtri_log_cuda(int dtype, const void* logp, void* out, int64_t n, cudaStream_t stream);

// lognormal.cu (glue: lognormal_ops.cpp).  x is [R, C, S] contiguous (R = rows before the unit dim, P = the rows
// per example for "sample"), mu/log_sigma/mask [C] (mu and log_sigma in p_dtype); `gran` is fastbayes::Granularity.
// `workspace` must hold fb_lognormal_workspace_bytes(...) bytes of device memory.
size_t fb_lognormal_workspace_bytes(int x_dtype, int64_t R, int64_t P, int64_t C, int64_t S, int gran,
                                    int backward);
cudaError_t fb_lognormal_noise_cuda(int x_dtype, const void* x, void* y, int p_dtype, const void* mu,
                                    const void* log_sigma, const bool* mask, double a, double b, int64_t R,
                                    int64_t P, int64_t C, int64_t S, int gran, uint64_t seed, uint64_t offset,
                                    void* workspace, cudaStream_t stream);
// grad_y of any dtype g_dtype (rounded to the math dtype on load, as the reference's g.to(math dtype)); dx in x's
// dtype, dmu/dlog_sigma in p_dtype.
cudaError_t fb_lognormal_noise_backward_cuda(int x_dtype, int g_dtype, const void* grad_y, const void* x, void* dx,
                                             int p_dtype, const void* mu, const void* log_sigma, const bool* mask,
                                             void* dmu, void* dlog_sigma, double a, double b, int64_t R, int64_t P,
                                             int64_t C, int64_t S, int gran, uint64_t seed, uint64_t offset,
                                             void* workspace, cudaStream_t stream);

// bernoulli.cu (glue: bernoulli_ops.cpp).  x is [R, C, S] as above, theta float32 [C]; g_dtype is x_dtype or, for
// 16-bit x, float32.  `workspace` must hold fb_bernoulli_workspace_bytes(...) bytes.
size_t fb_bernoulli_workspace_bytes(int64_t R, int64_t P, int64_t C, int64_t S, int backward);
cudaError_t fb_bernoulli_gate_cuda(int x_dtype, const void* x, void* y, const float* theta, const bool* mask,
                                   int64_t R, int64_t P, int64_t C, int64_t S, uint64_t seed, uint64_t offset,
                                   void* workspace, cudaStream_t stream);
cudaError_t fb_bernoulli_gate_backward_cuda(int x_dtype, int g_dtype, const void* grad_y, const void* x, void* dx,
                                            const float* theta, const bool* mask, float* dtheta, int64_t R, int64_t P,
                                            int64_t C, int64_t S, uint64_t seed, uint64_t offset, void* workspace,
                                            cudaStream_t stream);
// scale_mixture_prior over n units, every tensor in `dtype` (float32 or float64)
cudaError_t fb_scale_mixture_prior_cuda(int dtype, const void* theta, const void* sq_norm, const void* k,
                                        const void* log_var0, const void* log_var1, void* out, int64_t n,
                                        cudaStream_t stream);
cudaError_t fb_scale_mixture_prior_backward_cuda(int dtype, const void* grad, const void* theta, const void* sq_norm,
                                                 const void* k, const void* log_var0, const void* log_var1,
                                                 void* dtheta, void* dsq, int64_t n, cudaStream_t stream);

// svgd.cu (glue: svgd_ops.cpp).  Particle tensors are [n, m], float32 or float64; K, G [n, n] and h float64.
// Column splits of the Gram pass: a function of n and the widest tensor only (never of the device).
int64_t fb_svgd_gram_splits(int64_t n, int64_t max_m);
// partial [splits, n, n] float64: written (accumulate = 0) or added to
cudaError_t fb_svgd_gram_cuda(int dtype, const void* x, int64_t n, int64_t m, int64_t splits, int accumulate,
                              double* partial, cudaStream_t stream);
// G, keys: workspaces of n·n doubles and n(n−1)/2 uint64.  bandwidth <= 0 selects the median heuristic.  With no
// tensor columns at all (has_partial = 0) G is zero.
cudaError_t fb_svgd_finalize_cuda(const double* partial, int64_t splits, int has_partial, int64_t n,
                                  double bandwidth, double* G, unsigned long long* keys, double* K, double* h,
                                  cudaStream_t stream);
// φ [n, m] in x's dtype from K and h as svgd_kernel_matrix returns them
cudaError_t fb_svgd_apply_cuda(int dtype, const double* K, const double* h, const void* x, const void* s, void* out,
                               int64_t n, int64_t m, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
