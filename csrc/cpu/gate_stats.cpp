// The op library fastbayes_C (its one TORCH_LIBRARY block: every schema but the FRAGMENTs of other op
// families) and the CPU kernels of the per-unit gate statistics: one float64 evaluation of
// fastbayes/math.h per unit, parallel over units with at::parallel_for (OpenMP).  Inputs may mix
// dtypes as in the reference; outputs: kl/mean/snr and ∂/∂μ in μ's dtype, ∂/∂log σ in log σ's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "../common/convert.h"
#include "../common/kl_with_grad.h"
#include "../common/tensor_checks.h"
#include "fastbayes/math.h"

namespace fastbayes {
namespace {

// A unit in the ordinary regime costs 30-100 ns, one on the far-tail-exact path 0.3-3 µs.  In a training step the
// second thread is cold (caches, wake-up), so a call of a paper-sized model (a few hundred units, ~20 µs) stays on
// one thread; ResNet-50's 26,560 units split into 13 chunks.
constexpr int64_t kGrain = 2048;
// exact-path units of a chunk are collected and done after its fast ones, so the hot loop stays small
constexpr int kDeferred = 128;

// The arguments every per-unit op checks; returns (μ, log σ) contiguous.
std::pair<at::Tensor, at::Tensor> checked_units(const at::Tensor& mu, const at::Tensor& log_sigma, double a, double b) {
  check_unit_tensor(mu, "mu", mu);
  check_unit_tensor(log_sigma, "log_sigma", mu);
  TORCH_CHECK(mu.device().is_cpu(), "mu must be a CPU tensor for the CPU kernel, got ", mu.device());
  check_bounds(a, b, "a", "b");
  return {mu.contiguous(), log_sigma.contiguous()};
}

// Per chunk: fast(i, kind, μ, σ, α, β) on the units of the ordinary regime (math.h fast_kind), then exact(i) on the
// others, in batches of kDeferred.
template <typename Fast, typename Exact>
void for_units(int64_t n, const DoubleReader& mr, const DoubleReader& lr, double a, double b, Fast fast,
               Exact exact) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t deferred[kDeferred];
    int nd = 0;
    for (int64_t i = begin; i < end; ++i) {
      const double mu = mr[i], sigma = ::exp(lr[i]);
      const double al = (a - mu) / sigma, be = (b - mu) / sigma;
      const int kind = fast_kind(al, be, sigma, (b - a) / sigma);
      if (kind != kFastNone) {
        fast(i, kind, mu, sigma, al, be);
      } else {
        deferred[nd++] = i;
        if (nd == kDeferred) {
          for (int j = 0; j < nd; ++j) exact(deferred[j]);
          nd = 0;
        }
      }
    }
    for (int j = 0; j < nd; ++j) exact(deferred[j]);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_stats_cpu(const at::Tensor& mu, const at::Tensor& log_sigma,
                                                              double a, double b) {
  const auto [m, ls] = checked_units(mu, log_sigma, a, b);
  at::Tensor kl = at::empty_like(m), mean = at::empty_like(m), snr = at::empty_like(m);
  const DoubleReader mr(m), lr(ls);
  const DoubleWriter klw(kl), meanw(mean), snrw(snr);
  const double log_bma = ::log(b - a);
  const auto put = [&](int64_t i, const GateStats& s) {
    klw.set(i, s.kl);
    meanw.set(i, s.mean);
    snrw.set(i, s.snr);
  };
  for_units(
      m.numel(), mr, lr, a, b,
      [&](int64_t i, int kind, double mu, double sigma, double al, double be) {
        put(i, gate_stats_fast(kind, mu, lr[i], sigma, al, be, a, b, log_bma));
      },
      [&](int64_t i) { put(i, gate_stats_exact(mr[i], lr[i], a, b)); });
  return {kl, mean, snr};
}

std::tuple<at::Tensor, at::Tensor> gate_stats_backward_cpu(const at::Tensor& grad_kl, const at::Tensor& mu,
                                                           const at::Tensor& log_sigma, double a, double b) {
  const auto [m, ls] = checked_units(mu, log_sigma, a, b);
  check_unit_tensor(grad_kl, "grad_kl", mu);
  const at::Tensor g = grad_kl.contiguous();
  at::Tensor dmu = at::empty_like(m), dls = at::empty_like(ls);
  const DoubleReader gr(g), mr(m), lr(ls);
  const DoubleWriter dmuw(dmu), dlsw(dls);
  const auto put = [&](int64_t i, const GateGrad& d) {
    dmuw.set(i, d.dmu);
    dlsw.set(i, d.dlog_sigma);
  };
  for_units(
      m.numel(), mr, lr, a, b,
      [&](int64_t i, int kind, double, double sigma, double al, double be) {
        put(i, gate_stats_backward_fast(kind, gr[i], lr[i], sigma, al, be, a, b));
      },
      [&](int64_t i) { put(i, gate_stats_backward_exact(gr[i], mr[i], lr[i], a, b)); });
  return {dmu, dls};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_with_grad_cpu(const at::Tensor& mu, const at::Tensor& log_sigma,
                                                                double a, double b) {
  const auto [m, ls] = checked_units(mu, log_sigma, a, b);
  at::Tensor kl = at::empty_like(m);
  at::Tensor dmu = at::empty(m.sizes(), m.options().dtype(at::kDouble));
  at::Tensor dls = at::empty(m.sizes(), m.options().dtype(at::kDouble));
  const DoubleReader mr(m), lr(ls);
  const DoubleWriter klw(kl);
  double* const dm = dmu.mutable_data_ptr<double>();
  double* const dl = dls.mutable_data_ptr<double>();
  const double log_bma = ::log(b - a);
  const auto put = [&](int64_t i, const KlGrad& r) {
    klw.set(i, r.kl);
    dm[i] = r.dmu;
    dl[i] = r.dls;
  };
  for_units(
      m.numel(), mr, lr, a, b,
      [&](int64_t i, int kind, double, double sigma, double al, double be) {
        put(i, kl_grad_fast(kind, lr[i], sigma, al, be, a, b, log_bma, true));
      },
      [&](int64_t i) { put(i, kl_parts(mr[i], ::exp(lr[i]), a, b)); });
  return {kl, dmu, dls};
}

}  // namespace fastbayes

TORCH_LIBRARY(fastbayes_C, m) {
  m.def("gate_stats(Tensor mu, Tensor log_sigma, float a, float b) -> (Tensor, Tensor, Tensor)");
  m.def("gate_stats_backward(Tensor grad_kl, Tensor mu, Tensor log_sigma, float a, float b) -> (Tensor, Tensor)");
  // LogNormalGate's forward (log σ clamped, then lognormal_noise): an autograd-only composite (csrc/autograd.cpp);
  // seed -1 draws a fresh seed from torch's default CPU generator (as fastbayes.ops.lognormal.fresh_seed_int)
  m.def("lognormal_gate(Tensor x, Tensor mu, Tensor log_sigma, Tensor? mask, float a, float b, int dim, "
        "str granularity, int seed, int offset, float log_sigma_min, float log_sigma_max) -> Tensor");
  // Σ w·KL over several gates' units with log σ clamped: an autograd-only composite (csrc/autograd.cpp)
  m.def("kl_loss(Tensor[] mu, Tensor[] log_sigma, Tensor weights, float a, float b, float log_sigma_min, "
        "float log_sigma_max) -> Tensor");
  // the primitives of fastbayes/{philox,math}.h, exposed for bit-exactness and accuracy tests
  m.def("philox_uniform(int seed, int offset, int n) -> Tensor");
  m.def("log_ndtr(Tensor x) -> Tensor");
  m.def("ndtri_log(Tensor logp) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastbayes_C, CPU, m) {
  m.impl("gate_stats", &fastbayes::gate_stats_cpu);
  m.impl("gate_stats_backward", &fastbayes::gate_stats_backward_cpu);
}
