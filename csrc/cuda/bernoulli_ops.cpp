// Tensor glue of the CUDA bernoulli_gate and scale_mixture_prior ops: checks, contiguity, device guard, stream and
// workspace, then the C-ABI launchers of bernoulli.cu.  Schemas are defined in csrc/cpu/bernoulli.cpp (always
// compiled).  Only c10/cuda headers (never ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include "launchers.h"

namespace fastbayes {
namespace {

int dtype_code(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return FB_FLOAT32;
    case at::kDouble: return FB_FLOAT64;
    case at::kHalf: return FB_FLOAT16;
    case at::kBFloat16: return FB_BFLOAT16;
    default: TORCH_CHECK_VALUE(false, name, " must be float16, bfloat16, float32 or float64, got ", t);
  }
  return -1;
}

struct Layout {
  int64_t R, P, C, S;
};

Layout check_gate_args(const at::Tensor& x, const at::Tensor& theta, const std::optional<at::Tensor>& mask,
                       int64_t dim, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x must be a CUDA tensor for the CUDA kernel, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 2, "x must have at least two dimensions (examples and units), got ", x.sizes());
  dtype_code(x.scalar_type(), "x");
  TORCH_CHECK_VALUE(1 <= dim && dim < x.dim(), "dim must be in [1, ", x.dim(), "), got ", dim);
  TORCH_CHECK_VALUE(theta.dim() == 1 && theta.size(0) == x.size(dim), "theta must be 1-D with x.shape[", dim,
                    "] = ", x.size(dim), " entries, got shape ", theta.sizes());
  TORCH_CHECK_VALUE(theta.scalar_type() == at::kFloat, "theta must be float32, got ", theta.scalar_type());
  TORCH_CHECK_VALUE(theta.device() == x.device(), "theta must be on the device of x");
  if (mask) {
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool, "mask must be a bool tensor, got ", mask->scalar_type());
    TORCH_CHECK_VALUE(mask->sizes() == theta.sizes(), "mask must have the shape of theta ", theta.sizes(), ", got ",
                      mask->sizes());
    TORCH_CHECK_VALUE(mask->device() == x.device(), "mask must be on the device of x");
  }
  TORCH_CHECK_VALUE(seed >= 0, "seed must be non-negative, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0, "offset must be non-negative, got ", offset);
  Layout l{1, 1, x.size(dim), 1};
  for (int64_t d = dim + 1; d < x.dim(); ++d) l.S *= x.size(d);
  for (int64_t d = 1; d < dim; ++d) l.P *= x.size(d);
  for (int64_t d = 0; d < dim; ++d) l.R *= x.size(d);
  // the kernels count a unit's elements per row, the units and the rows in 32 bits
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(l.S < kMax32 && l.C < kMax32 && l.R < kMax32, "bernoulli_gate (cuda): x.shape ", x.sizes(),
              " has a dimension group of 2^31 elements or more");
  return l;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " (cuda) failed: ", cudaGetErrorString(err));
}

at::Tensor workspace(const at::Tensor& x, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, x.options().dtype(at::kByte));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor bernoulli_gate_cuda(const at::Tensor& x_in, const at::Tensor& theta_in,
                               const std::optional<at::Tensor>& mask_in, int64_t dim, int64_t seed, int64_t offset) {
  const Layout l = check_gate_args(x_in, theta_in, mask_in, dim, seed, offset);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous();
  const at::Tensor mask = mask_in ? mask_in->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const at::Tensor ws = workspace(x, fb_bernoulli_workspace_bytes(l.R, l.P, l.C, l.S, 0));
  check_launch(fb_bernoulli_gate_cuda(dtype_code(x.scalar_type(), "x"), x.const_data_ptr(), y.mutable_data_ptr(),
                                      theta.const_data_ptr<float>(), mask_in ? mask.const_data_ptr<bool>() : nullptr,
                                      l.R, l.P, l.C, l.S, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                      ws.mutable_data_ptr(), stream()),
               "bernoulli_gate");
  return y;
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x_in,
                                                                const at::Tensor& theta_in,
                                                                const std::optional<at::Tensor>& mask_in, int64_t dim,
                                                                int64_t seed, int64_t offset) {
  const Layout l = check_gate_args(x_in, theta_in, mask_in, dim, seed, offset);
  TORCH_CHECK_VALUE(grad_y.sizes() == x_in.sizes(), "grad_y must have the shape of x ", x_in.sizes(), ", got ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(grad_y.device() == x_in.device(), "grad_y must be on the device of x");
  dtype_code(grad_y.scalar_type(), "grad_y");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous();
  const at::Tensor mask = mask_in ? mask_in->contiguous() : at::Tensor();
  // the reference computes with g.to(math dtype): keep g in x's dtype, else convert it exactly like that
  const at::ScalarType math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g = (grad_y.scalar_type() == x.scalar_type() ? grad_y : grad_y.to(math)).contiguous();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dtheta = at::empty_like(theta);
  if (theta.numel() == 0) return {dx, dtheta};
  const at::Tensor ws = workspace(x, fb_bernoulli_workspace_bytes(l.R, l.P, l.C, l.S, 1));
  check_launch(fb_bernoulli_gate_backward_cuda(
                   dtype_code(x.scalar_type(), "x"), dtype_code(g.scalar_type(), "grad_y"), g.const_data_ptr(),
                   x.const_data_ptr(), dx.mutable_data_ptr(), theta.const_data_ptr<float>(),
                   mask_in ? mask.const_data_ptr<bool>() : nullptr, dtheta.mutable_data_ptr<float>(), l.R, l.P, l.C,
                   l.S, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), ws.mutable_data_ptr(), stream()),
               "bernoulli_gate_backward");
  return {dx, dtheta};
}

int check_prior_args(const at::Tensor& theta, std::initializer_list<std::pair<const char*, const at::Tensor*>> rest) {
  TORCH_CHECK_VALUE(theta.is_cuda(), "theta must be a CUDA tensor for the CUDA kernel, got ", theta.device());
  TORCH_CHECK_VALUE(theta.dim() == 1, "theta must be 1-D (one value per unit), got shape ", theta.sizes());
  TORCH_CHECK_VALUE(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble,
                    "theta must be float32 or float64, got ", theta.scalar_type());
  for (const auto& [name, t] : rest) {
    TORCH_CHECK_VALUE(t->sizes() == theta.sizes(), name, " must have the shape of theta ", theta.sizes(), ", got ",
                      t->sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == theta.scalar_type(), name, " must have the dtype of theta (",
                      theta.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == theta.device(), name, " must be on the device of theta");
  }
  return dtype_code(theta.scalar_type(), "theta");
}

at::Tensor scale_mixture_prior_cuda(const at::Tensor& theta, const at::Tensor& sq_norm, const at::Tensor& k,
                                    const at::Tensor& log_var0, const at::Tensor& log_var1) {
  const int dt =
      check_prior_args(theta, {{"sq_norm", &sq_norm}, {"k", &k}, {"log_var0", &log_var0}, {"log_var1", &log_var1}});
  const c10::cuda::CUDAGuard guard(theta.device());
  const at::Tensor th = theta.contiguous(), sq = sq_norm.contiguous(), kk = k.contiguous(),
                   l0 = log_var0.contiguous(), l1 = log_var1.contiguous();
  at::Tensor out = at::empty_like(th);
  check_launch(fb_scale_mixture_prior_cuda(dt, th.const_data_ptr(), sq.const_data_ptr(), kk.const_data_ptr(),
                                           l0.const_data_ptr(), l1.const_data_ptr(), out.mutable_data_ptr(),
                                           th.numel(), stream()),
               "scale_mixture_prior");
  return out;
}

std::tuple<at::Tensor, at::Tensor> scale_mixture_prior_backward_cuda(const at::Tensor& grad, const at::Tensor& theta,
                                                                     const at::Tensor& sq_norm, const at::Tensor& k,
                                                                     const at::Tensor& log_var0,
                                                                     const at::Tensor& log_var1) {
  const int dt = check_prior_args(theta, {{"grad", &grad}, {"sq_norm", &sq_norm}, {"k", &k}, {"log_var0", &log_var0},
                                          {"log_var1", &log_var1}});
  const c10::cuda::CUDAGuard guard(theta.device());
  const at::Tensor g = grad.contiguous(), th = theta.contiguous(), sq = sq_norm.contiguous(), kk = k.contiguous(),
                   l0 = log_var0.contiguous(), l1 = log_var1.contiguous();
  at::Tensor dth = at::empty_like(th), dsq = at::empty_like(sq);
  check_launch(fb_scale_mixture_prior_backward_cuda(dt, g.const_data_ptr(), th.const_data_ptr(), sq.const_data_ptr(),
                                                    kk.const_data_ptr(), l0.const_data_ptr(), l1.const_data_ptr(),
                                                    dth.mutable_data_ptr(), dsq.mutable_data_ptr(), th.numel(),
                                                    stream()),
               "scale_mixture_prior_backward");
  return {dth, dsq};
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_IMPL(fastbayes_C, CUDA, m) {
  m.impl("bernoulli_gate", &fastbayes::bernoulli_gate_cuda);
  m.impl("bernoulli_gate_backward", &fastbayes::bernoulli_gate_backward_cuda);
  m.impl("scale_mixture_prior", &fastbayes::scale_mixture_prior_cuda);
  m.impl("scale_mixture_prior_backward", &fastbayes::scale_mixture_prior_backward_cuda);
}
