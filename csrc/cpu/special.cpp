// The primitives of fastbayes/philox.h and fastbayes/math.h as ops, for bit-exactness and accuracy tests:
// philox_uniform (float32 uniforms of (seed, offset), the draws every backend makes), log_ndtr (float64
// math) and ndtri_log (float math for 32/16-bit inputs, double for float64).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "../common/convert.h"
#include "../common/tensor_checks.h"
#include "fastbayes/math.h"
#include "fastbayes/philox.h"

namespace fastbayes {
namespace {

constexpr int64_t kGrain = 2048;

// No tensor argument, hence registered as CompositeExplicitAutograd (a Python fake can still be
// registered for it); the result is always a CPU tensor.
at::Tensor philox_uniform_cpu(int64_t seed, int64_t offset, int64_t n) {
  TORCH_CHECK(n >= 0, "n must be >= 0, got ", n);
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.mutable_data_ptr<float>();
  // seed and offset carry the bit patterns of 64-bit unsigned values (as the reference's `& 0xFFFFFFFF`)
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) op[i] = philox_uniform(s, o + static_cast<uint64_t>(i));
  });
  return out;
}

template <typename F>
at::Tensor map_floating(const at::Tensor& x, const char* name, F f) {
  TORCH_CHECK(is_supported_float(x.scalar_type()), name,
              ": input must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), name, ": input must be a CPU tensor for the CPU kernel, got ", x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "special_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op[i] = f(xp[i]);
    });
  });
  return out;
}

at::Tensor log_ndtr_cpu(const at::Tensor& x) {
  return map_floating(x, "log_ndtr", [](auto v) {
    return from_double<decltype(v)>(log_ndtr(static_cast<double>(v)));
  });
}

at::Tensor ndtri_log_cpu(const at::Tensor& logp) {
  return map_floating(logp, "ndtri_log", [](auto v) {
    using T = decltype(v);
    if constexpr (std::is_same_v<T, double>) {
      return ndtri_log<double>(v);
    } else {
      return T(ndtri_log<float>(static_cast<float>(v)));
    }
  });
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_IMPL(fastbayes_C, CompositeExplicitAutograd, m) {
  m.impl("philox_uniform", &fastbayes::philox_uniform_cpu);
}

TORCH_LIBRARY_IMPL(fastbayes_C, CPU, m) {
  m.impl("log_ndtr", &fastbayes::log_ndtr_cpu);
  m.impl("ndtri_log", &fastbayes::ndtri_log_cpu);
}
