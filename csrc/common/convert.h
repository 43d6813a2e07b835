// Element access of the CPU ops (ATen only; never include from a .cu file).  Values travel as double:
// every supported dtype converts to double exactly, and a store narrows double -> float -> 16-bit, the
// same double rounding as torch's Tensor.to(dtype) from float64 (c10::Half/BFloat16 take a float).
#pragma once
#include <ATen/ATen.h>

#include <type_traits>

namespace fastbayes {

template <typename T>
inline T from_double(double x) {
  if constexpr (std::is_same_v<T, double>) {
    return x;
  } else {
    return T(static_cast<float>(x));
  }
}

// A contiguous float16/bfloat16/float32/float64 tensor read as double; the dtype switch is per element but
// perfectly predictable, and each unit then costs microseconds of float64 math.
class DoubleReader {
 public:
  explicit DoubleReader(const at::Tensor& t) : p_(t.const_data_ptr()), dtype_(t.scalar_type()) {}
  double operator[](int64_t i) const {
    switch (dtype_) {
      case at::kDouble: return static_cast<const double*>(p_)[i];
      case at::kFloat: return static_cast<const float*>(p_)[i];
      case at::kHalf: return static_cast<float>(static_cast<const at::Half*>(p_)[i]);
      default: return static_cast<float>(static_cast<const at::BFloat16*>(p_)[i]);
    }
  }

 private:
  const void* p_;
  at::ScalarType dtype_;
};

class DoubleWriter {
 public:
  explicit DoubleWriter(at::Tensor& t) : p_(t.mutable_data_ptr()), dtype_(t.scalar_type()) {}
  void set(int64_t i, double v) const {
    switch (dtype_) {
      case at::kDouble: static_cast<double*>(p_)[i] = v; break;
      case at::kFloat: static_cast<float*>(p_)[i] = static_cast<float>(v); break;
      case at::kHalf: static_cast<at::Half*>(p_)[i] = from_double<at::Half>(v); break;
      default: static_cast<at::BFloat16*>(p_)[i] = from_double<at::BFloat16>(v); break;
    }
  }

 private:
  void* p_;
  at::ScalarType dtype_;
};

}  // namespace fastbayes
