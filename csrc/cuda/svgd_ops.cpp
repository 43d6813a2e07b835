// Tensor glue of the CUDA svgd ops: checks, contiguity, device guard, stream and workspaces, then the C-ABI launchers
// of svgd.cu.  Schemas are defined in csrc/cpu/svgd.cpp (always compiled).  No host sync: h and K stay on the device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "launchers.h"

namespace fastbayes {
namespace {

int svgd_dtype(at::ScalarType t, const char* name) {
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kDouble, name, " must be float32 or float64, got ", t);
  return t == at::kFloat ? FB_FLOAT32 : FB_FLOAT64;
}

std::tuple<at::Tensor, at::Tensor> svgd_kernel_matrix_cuda(at::TensorList particles,
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
  int64_t max_m = 0;
  for (size_t k = 0; k < particles.size(); ++k) {
    const at::Tensor& x = particles[k];
    TORCH_CHECK_VALUE(x.is_cuda(), "particles[", k, "] must be a CUDA tensor for the CUDA kernel, got ", x.device());
    TORCH_CHECK_VALUE(x.device() == first.device(), "particles must be on one device");
    svgd_dtype(x.scalar_type(), "particles");
    TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(0) == n, "particles[", k, "] must have n = ", n,
                      " particles in dim 0, got shape ", x.sizes());
    xs.push_back(x.contiguous());
    max_m = std::max<int64_t>(max_m, x.numel() / n);
  }
  const c10::cuda::CUDAGuard guard(first.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto f64 = first.options().dtype(at::kDouble);
  const int64_t splits = fb_svgd_gram_splits(n, std::max<int64_t>(max_m, 1));
  // zeroed once, every tensor adds its Gram pieces (a tensor narrower than another leaves some splits untouched)
  at::Tensor partial = at::zeros({splits, n, n}, f64);
  bool has_partial = false;
  for (const at::Tensor& x : xs) {
    const int64_t m = x.numel() / n;
    if (m == 0) continue;
    C10_CUDA_CHECK(fb_svgd_gram_cuda(svgd_dtype(x.scalar_type(), "particles"), x.const_data_ptr(), n, m, splits,
                                     /*accumulate=*/1, partial.mutable_data_ptr<double>(), stream));
    has_partial = true;
  }
  at::Tensor G = at::empty({n, n}, f64);
  at::Tensor keys = at::empty({std::max<int64_t>(1, n * (n - 1) / 2)}, first.options().dtype(at::kLong));
  at::Tensor K = at::empty({n, n}, f64);
  at::Tensor h = at::empty({}, f64);
  C10_CUDA_CHECK(fb_svgd_finalize_cuda(partial.const_data_ptr<double>(), splits, has_partial ? 1 : 0, n,
                                       bandwidth ? *bandwidth : -1.0, G.mutable_data_ptr<double>(),
                                       reinterpret_cast<unsigned long long*>(keys.mutable_data_ptr<int64_t>()),
                                       K.mutable_data_ptr<double>(), h.mutable_data_ptr<double>(), stream));
  return {K, h};
}

at::Tensor svgd_apply_cuda(const at::Tensor& K_in, const at::Tensor& h_in, const at::Tensor& x_in,
                           const at::Tensor& score_in) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have a leading particle dimension");
  const int64_t n = x_in.size(0);
  TORCH_CHECK_VALUE(n >= 1, "x must hold at least one particle");
  TORCH_CHECK_VALUE(K_in.dim() == 2 && K_in.size(0) == n && K_in.size(1) == n, "K must be [n, n] = [", n, ", ", n,
                    "], got ", K_in.sizes());
  TORCH_CHECK_VALUE(h_in.numel() == 1, "h must hold one value, got shape ", h_in.sizes());
  TORCH_CHECK_VALUE(K_in.is_floating_point() && h_in.is_floating_point(), "K and h must be floating-point");
  TORCH_CHECK_VALUE(score_in.sizes() == x_in.sizes(), "score must have the shape of x ", x_in.sizes(), ", got ",
                    score_in.sizes());
  const int dt = svgd_dtype(x_in.scalar_type(), "x");
  TORCH_CHECK_VALUE(score_in.scalar_type() == x_in.scalar_type(), "score must have the dtype of x (",
                    x_in.scalar_type(), "), got ", score_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.is_cuda() && score_in.device() == x_in.device() && K_in.device() == x_in.device() &&
                        h_in.device() == x_in.device(),
                    "K, h, x and score must be on one CUDA device");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor K = K_in.to(at::kDouble).contiguous(), h = h_in.to(at::kDouble).reshape({1}).contiguous();
  const at::Tensor X = x_in.contiguous(), S = score_in.contiguous();
  at::Tensor out = at::empty_like(X);
  const int64_t m = X.numel() / n;
  if (m == 0) return out;
  C10_CUDA_CHECK(fb_svgd_apply_cuda(dt, K.const_data_ptr<double>(), h.const_data_ptr<double>(), X.const_data_ptr(),
                                    S.const_data_ptr(), out.mutable_data_ptr(), n, m,
                                    c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_IMPL(fastbayes_C, CUDA, m) {
  m.impl("svgd_kernel_matrix", &fastbayes::svgd_kernel_matrix_cuda);
  m.impl("svgd_apply", &fastbayes::svgd_apply_cuda);
}
