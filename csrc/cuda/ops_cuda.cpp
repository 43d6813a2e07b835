// Tensor glue of the CUDA ops: checks, contiguity, device guard and stream, then the C-ABI launchers of
// gate_stats.cu / special.cu.  Output dtypes as on the CPU (csrc/cpu/gate_stats.cpp).  Only c10/cuda headers (never ATen/cuda/CUDAContext.h, which pulls in
// cuBLAS/cuSPARSE headers a minimal toolkit lacks).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/tensor_checks.h"
#include "launchers.h"

namespace fastbayes {
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return FB_FLOAT32;
    case at::kDouble: return FB_FLOAT64;
    case at::kHalf: return FB_FLOAT16;
    case at::kBFloat16: return FB_BFLOAT16;
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
  return -1;
}

void check_cuda(const at::Tensor& mu) {
  TORCH_CHECK(mu.is_cuda(), "mu must be a CUDA tensor for the CUDA kernel, got ", mu.device());
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_stats_cuda(const at::Tensor& mu, const at::Tensor& log_sigma,
                                                               double a, double b) {
  check_unit_tensor(mu, "mu", mu);
  check_unit_tensor(log_sigma, "log_sigma", mu);
  check_cuda(mu);
  check_bounds(a, b, "a", "b");
  const c10::cuda::CUDAGuard guard(mu.device());
  const at::Tensor m = mu.contiguous(), ls = log_sigma.contiguous();
  at::Tensor kl = at::empty_like(m), mean = at::empty_like(m), snr = at::empty_like(m);
  C10_CUDA_CHECK(fb_gate_stats_cuda(m.const_data_ptr(), dtype_code(m.scalar_type()), ls.const_data_ptr(),
                                    dtype_code(ls.scalar_type()), kl.mutable_data_ptr(), mean.mutable_data_ptr(),
                                    snr.mutable_data_ptr(), m.numel(), a, b, stream()));
  return {kl, mean, snr};
}

std::tuple<at::Tensor, at::Tensor> gate_stats_backward_cuda(const at::Tensor& grad_kl, const at::Tensor& mu,
                                                            const at::Tensor& log_sigma, double a, double b) {
  check_unit_tensor(mu, "mu", mu);
  check_unit_tensor(log_sigma, "log_sigma", mu);
  check_unit_tensor(grad_kl, "grad_kl", mu);
  check_cuda(mu);
  check_bounds(a, b, "a", "b");
  const c10::cuda::CUDAGuard guard(mu.device());
  const at::Tensor g = grad_kl.contiguous(), m = mu.contiguous(), ls = log_sigma.contiguous();
  at::Tensor dmu = at::empty_like(m), dls = at::empty_like(ls);
  C10_CUDA_CHECK(fb_gate_stats_backward_cuda(g.const_data_ptr(), dtype_code(g.scalar_type()), m.const_data_ptr(),
                                             dtype_code(m.scalar_type()), ls.const_data_ptr(),
                                             dtype_code(ls.scalar_type()), dmu.mutable_data_ptr(),
                                             dls.mutable_data_ptr(), m.numel(), a, b, stream()));
  return {dmu, dls};
}

at::Tensor prepare_elementwise(const at::Tensor& x, const char* name) {
  TORCH_CHECK(is_supported_float(x.scalar_type()), name,
              ": input must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.is_cuda(), name, ": input must be a CUDA tensor for the CUDA kernel, got ", x.device());
  return x.contiguous();
}

at::Tensor log_ndtr_cuda(const at::Tensor& x) {
  const at::Tensor xc = prepare_elementwise(x, "log_ndtr");
  const c10::cuda::CUDAGuard guard(xc.device());
  at::Tensor out = at::empty_like(xc);
  C10_CUDA_CHECK(fb_log_ndtr_cuda(dtype_code(xc.scalar_type()), xc.const_data_ptr(), out.mutable_data_ptr(),
                                  xc.numel(), stream()));
  return out;
}

at::Tensor ndtri_log_cuda(const at::Tensor& logp) {
  const at::Tensor xc = prepare_elementwise(logp, "ndtri_log");
  const c10::cuda::CUDAGuard guard(xc.device());
  at::Tensor out = at::empty_like(xc);
  C10_CUDA_CHECK(fb_ndtri_log_cuda(dtype_code(xc.scalar_type()), xc.const_data_ptr(), out.mutable_data_ptr(),
                                   xc.numel(), stream()));
  return out;
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_IMPL(fastbayes_C, CUDA, m) {
  m.impl("gate_stats", &fastbayes::gate_stats_cuda);
  m.impl("gate_stats_backward", &fastbayes::gate_stats_backward_cuda);
  m.impl("log_ndtr", &fastbayes::log_ndtr_cuda);
  m.impl("ndtri_log", &fastbayes::ndtri_log_cuda);
}
