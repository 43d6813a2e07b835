// The op library fastbayes_C (its one TORCH_LIBRARY block: every schema but the FRAGMENTs of other op
// families) and the CPU kernels of the per-unit gate statistics: one float64 evaluation of
// fastbayes/math.h per unit, parallel over units with at::parallel_for (OpenMP).  Inputs may mix
// dtypes as in the reference; outputs: kl/mean/snr and ∂/∂μ in μ's dtype, ∂/∂log σ in log σ's, ΔF float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "../common/convert.h"
#include "../common/tensor_checks.h"
#include "fastbayes/math.h"

namespace fastbayes {
namespace {

// One unit costs tens of float64 transcendentals (µs): small chunks already pay for a thread.
constexpr int64_t kGrain = 64;

void check_cpu(const at::Tensor& mu) {
  TORCH_CHECK(mu.device().is_cpu(), "mu must be a CPU tensor for the CPU kernel, got ", mu.device());
}

template <typename F>
void for_units(int64_t n, F f) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) f(i);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_stats_cpu(const at::Tensor& mu, const at::Tensor& log_sigma,
                                                              double a, double b) {
  check_unit_tensor(mu, "mu", mu);
  check_unit_tensor(log_sigma, "log_sigma", mu);
  check_cpu(mu);
  check_bounds(a, b, "a", "b");
  const at::Tensor m = mu.contiguous(), ls = log_sigma.contiguous();
  at::Tensor kl = at::empty_like(m), mean = at::empty_like(m), snr = at::empty_like(m);
  const DoubleReader mr(m), lr(ls);
  const DoubleWriter klw(kl), meanw(mean), snrw(snr);
  for_units(m.numel(), [&](int64_t i) {
    const GateStats s = gate_stats(mr[i], lr[i], a, b);
    klw.set(i, s.kl);
    meanw.set(i, s.mean);
    snrw.set(i, s.snr);
  });
  return {kl, mean, snr};
}

std::tuple<at::Tensor, at::Tensor> gate_stats_backward_cpu(const at::Tensor& grad_kl, const at::Tensor& mu,
                                                           const at::Tensor& log_sigma, double a, double b) {
  check_unit_tensor(mu, "mu", mu);
  check_unit_tensor(log_sigma, "log_sigma", mu);
  check_unit_tensor(grad_kl, "grad_kl", mu);
  check_cpu(mu);
  check_bounds(a, b, "a", "b");
  const at::Tensor g = grad_kl.contiguous(), m = mu.contiguous(), ls = log_sigma.contiguous();
  at::Tensor dmu = at::empty_like(m), dls = at::empty_like(ls);
  const DoubleReader gr(g), mr(m), lr(ls);
  const DoubleWriter dmuw(dmu), dlsw(dls);
  for_units(m.numel(), [&](int64_t i) {
    const GateGrad d = gate_stats_backward(gr[i], mr[i], lr[i], a, b);
    dmuw.set(i, d.dmu);
    dlsw.set(i, d.dlog_sigma);
  });
  return {dmu, dls};
}

// Shared loop of the two ΔF criteria: float64 output whatever the parameter dtypes.
template <typename F>
at::Tensor delta_f_loop(const at::Tensor& mu, const at::Tensor& log_sigma, F f) {
  const at::Tensor m = mu.contiguous(), ls = log_sigma.contiguous();
  at::Tensor out = at::empty(m.sizes(), m.options().dtype(at::kDouble));
  double* op = out.mutable_data_ptr<double>();
  const DoubleReader mr(m), lr(ls);
  for_units(m.numel(), [&](int64_t i) { op[i] = f(mr[i], lr[i]); });
  return out;
}

at::Tensor delta_f_n_cpu(const at::Tensor& mu, const at::Tensor& log_sigma, double a, double b,
                         double reduced_loc, double reduced_scale, bool code_offset) {
  check_unit_tensor(mu, "mu", mu);
  check_unit_tensor(log_sigma, "log_sigma", mu);
  check_cpu(mu);
  check_delta_f_n_args(a, b, reduced_loc, reduced_scale);
  return delta_f_loop(mu, log_sigma, [=](double m, double ls) {
    return delta_f_n(m, ls, a, b, reduced_loc, reduced_scale, code_offset);
  });
}

at::Tensor delta_f_u_cpu(const at::Tensor& mu, const at::Tensor& log_sigma, double a, double b, double a2,
                         double b2) {
  check_unit_tensor(mu, "mu", mu);
  check_unit_tensor(log_sigma, "log_sigma", mu);
  check_cpu(mu);
  check_delta_f_u_args(a, b, a2, b2);
  return delta_f_loop(mu, log_sigma, [=](double m, double ls) { return delta_f_u(m, ls, a, b, a2, b2); });
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY(fastbayes_C, m) {
  m.def("gate_stats(Tensor mu, Tensor log_sigma, float a, float b) -> (Tensor, Tensor, Tensor)");
  m.def("gate_stats_backward(Tensor grad_kl, Tensor mu, Tensor log_sigma, float a, float b) -> (Tensor, Tensor)");
  m.def("delta_f_n(Tensor mu, Tensor log_sigma, float a, float b, float reduced_loc, float reduced_scale, "
        "bool code_offset) -> Tensor");
  m.def("delta_f_u(Tensor mu, Tensor log_sigma, float a, float b, float a2, float b2) -> Tensor");
  // the primitives of fastbayes/{philox,math}.h, exposed for bit-exactness and accuracy tests
  m.def("philox_uniform(int seed, int offset, int n) -> Tensor");
  m.def("log_ndtr(Tensor x) -> Tensor");
  m.def("ndtri_log(Tensor logp) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastbayes_C, CPU, m) {
  m.impl("gate_stats", &fastbayes::gate_stats_cpu);
  m.impl("gate_stats_backward", &fastbayes::gate_stats_backward_cpu);
  m.impl("delta_f_n", &fastbayes::delta_f_n_cpu);
  m.impl("delta_f_u", &fastbayes::delta_f_u_cpu);
}
