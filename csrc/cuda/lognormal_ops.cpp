// Tensor glue of the CUDA lognormal_noise ops: checks, contiguity, device guard, stream and workspace, then the
// C-ABI launchers of lognormal.cu.  Schemas are defined in csrc/cpu/lognormal.cpp (always compiled).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>

#include "fastbayes/lognormal.h"
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
  Granularity gran;
};

Layout check_args(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& log_sigma,
                  const std::optional<at::Tensor>& mask, double a, double b, int64_t dim, c10::string_view gran_sv,
                  int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x must be a CUDA tensor for the CUDA kernel, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least one dimension");
  dtype_code(x.scalar_type(), "x");
  TORCH_CHECK_VALUE(0 <= dim && dim < x.dim(), "dim must be in [0, ", x.dim(), "), got ", dim);
  const std::string_view gran(gran_sv.data(), gran_sv.size());
  Granularity g;
  if (gran == "batch") {
    g = Granularity::kBatch;
  } else if (gran == "sample") {
    g = Granularity::kSample;
  } else {
    TORCH_CHECK_VALUE(gran == "element", "granularity must be one of ('batch', 'sample', 'element'), got '",
                      std::string(gran), "'");
    g = Granularity::kElement;
  }
  TORCH_CHECK_VALUE(!(g == Granularity::kSample && dim == 0), "granularity='sample' needs dim != 0");
  TORCH_CHECK_VALUE(mu.dim() == 1 && mu.size(0) == x.size(dim), "mu must be 1-D with x.shape[", dim, "] = ",
                    x.size(dim), " entries, got shape ", mu.sizes());
  dtype_code(mu.scalar_type(), "mu");
  TORCH_CHECK_VALUE(log_sigma.sizes() == mu.sizes() && log_sigma.scalar_type() == mu.scalar_type(),
                    "log_sigma must have the shape and dtype of mu");
  TORCH_CHECK_VALUE(mu.device() == x.device() && log_sigma.device() == x.device(),
                    "x, mu and log_sigma must be on one device");
  if (mask) {
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool, "mask must be a bool tensor, got ", mask->scalar_type());
    TORCH_CHECK_VALUE(mask->sizes() == mu.sizes(), "mask must have the shape of mu ", mu.sizes(), ", got ",
                      mask->sizes());
    TORCH_CHECK_VALUE(mask->device() == x.device(), "mask must be on the device of x");
  }
  TORCH_CHECK_VALUE(std::isfinite(a) && std::isfinite(b) && a < b, "bounds must be finite with a < b, got a=", a,
                    ", b=", b);
  TORCH_CHECK_VALUE(seed >= 0, "seed must be non-negative, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0, "offset must be non-negative, got ", offset);
  Layout l{1, 1, x.size(dim), 1, g};
  for (int64_t d = dim + 1; d < x.dim(); ++d) l.S *= x.size(d);
  for (int64_t d = 1; d < dim; ++d) l.P *= x.size(d);
  for (int64_t d = 0; d < dim; ++d) l.R *= x.size(d);
  // the kernels count a unit's elements per row, the units and the rows in 32 bits
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(l.S < kMax32 && l.C < kMax32 && l.R < kMax32, "lognormal_noise (cuda): x.shape ", x.sizes(),
              " has a dimension group of 2^31 elements or more");
  return l;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " (cuda) failed: ", cudaGetErrorString(err));
}

at::Tensor workspace(const at::Tensor& x, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, x.options().dtype(at::kByte));
}

at::Tensor lognormal_noise_cuda(const at::Tensor& x_in, const at::Tensor& mu_in, const at::Tensor& log_sigma_in,
                                const std::optional<at::Tensor>& mask_in, double a, double b, int64_t dim,
                                c10::string_view granularity, int64_t seed, int64_t offset) {
  const Layout l = check_args(x_in, mu_in, log_sigma_in, mask_in, a, b, dim, granularity, seed, offset);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), mu = mu_in.contiguous(), ls = log_sigma_in.contiguous();
  const at::Tensor mask = mask_in ? mask_in->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int xd = dtype_code(x.scalar_type(), "x");
  const int gran = static_cast<int>(l.gran);
  const at::Tensor ws = workspace(x, fb_lognormal_workspace_bytes(xd, l.R, l.P, l.C, l.S, gran, 0));
  check_launch(fb_lognormal_noise_cuda(xd, x.const_data_ptr(), y.mutable_data_ptr(), dtype_code(mu.scalar_type(), "mu"),
                                       mu.const_data_ptr(), ls.const_data_ptr(),
                                       mask_in ? mask.const_data_ptr<bool>() : nullptr, a, b, l.R, l.P, l.C, l.S, gran,
                                       static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                       ws.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
               "lognormal_noise");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lognormal_noise_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& mu_in, const at::Tensor& log_sigma_in,
    const std::optional<at::Tensor>& mask_in, double a, double b, int64_t dim, c10::string_view granularity,
    int64_t seed, int64_t offset) {
  const Layout l = check_args(x_in, mu_in, log_sigma_in, mask_in, a, b, dim, granularity, seed, offset);
  TORCH_CHECK_VALUE(grad_y.sizes() == x_in.sizes(), "grad_y must have the shape of x ", x_in.sizes(), ", got ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(grad_y.device() == x_in.device(), "grad_y must be on the device of x");
  dtype_code(grad_y.scalar_type(), "grad_y");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), mu = mu_in.contiguous(), ls = log_sigma_in.contiguous();
  const at::Tensor mask = mask_in ? mask_in->contiguous() : at::Tensor();
  // any dtype: the kernels round g to the math dtype on load, as the reference's g.to(math dtype) does
  const at::Tensor g = grad_y.contiguous();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dmu = at::empty_like(mu), dls = at::empty_like(mu);
  if (mu.numel() == 0) return {dx, dmu, dls};
  const int xd = dtype_code(x.scalar_type(), "x");
  const int gran = static_cast<int>(l.gran);
  const at::Tensor ws = workspace(x, fb_lognormal_workspace_bytes(xd, l.R, l.P, l.C, l.S, gran, 1));
  check_launch(fb_lognormal_noise_backward_cuda(
                   xd, dtype_code(g.scalar_type(), "grad_y"), g.const_data_ptr(), x.const_data_ptr(),
                   dx.mutable_data_ptr(), dtype_code(mu.scalar_type(), "mu"), mu.const_data_ptr(), ls.const_data_ptr(),
                   mask_in ? mask.const_data_ptr<bool>() : nullptr, dmu.mutable_data_ptr(), dls.mutable_data_ptr(), a,
                   b, l.R, l.P, l.C, l.S, gran, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                   ws.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
               "lognormal_noise_backward");
  return {dx, dmu, dls};
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_IMPL(fastbayes_C, CUDA, m) {
  m.impl("lognormal_noise", &fastbayes::lognormal_noise_cuda);
  m.impl("lognormal_noise_backward", &fastbayes::lognormal_noise_backward_cuda);
}
