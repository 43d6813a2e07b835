// Argument checks shared by the CPU and CUDA tensor glue (ATen only; never include from a .cu file).
#pragma once
#include <ATen/ATen.h>

#include <cmath>

namespace fastbayes {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// 1-D float16/bfloat16/float32/float64 tensor with the shape and device of `ref` (the per-unit vector μ).
// The dtypes may differ, as in the reference: every value is read as double.
inline void check_unit_tensor(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.dim() == 1, name, " must be 1-D (one value per unit), got shape ", t.sizes());
  TORCH_CHECK(is_supported_float(t.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
  if (!t.is_same(ref)) {
    TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the shape of mu ", ref.sizes(), ", got ", t.sizes());
    TORCH_CHECK(t.device() == ref.device(), name, " must be on the device of mu (", ref.device(), "), got ",
                t.device());
  }
}

inline void check_bounds(double a, double b, const char* an, const char* bn) {
  TORCH_CHECK(std::isfinite(a) && std::isfinite(b) && a < b, "the truncation bounds must be finite with ", an,
              " < ", bn, ", got ", an, "=", a, ", ", bn, "=", b);
}

}  // namespace fastbayes
