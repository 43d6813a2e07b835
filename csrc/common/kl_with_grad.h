// The CPU kernel behind fastbayes.kl_loss's C++ autograd node (csrc/autograd.cpp): per unit, KL(q ‖ LogU[a, b])
// in mu's dtype and its gradients ∂KL/∂μ, ∂KL/∂log σ in float64, in one evaluation of fastbayes/math.h (the same
// forms as gate_stats' KL and gate_stats_backward, so the same bits once scaled), instead of a forward that also
// computes E[θ] and the SNR and a backward that evaluates the KL's pieces again.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace fastbayes {
std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_with_grad_cpu(const at::Tensor& mu, const at::Tensor& log_sigma,
                                                                double a, double b);
}  // namespace fastbayes
