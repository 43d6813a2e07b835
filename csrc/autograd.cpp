// Autograd kernels in C++ for the eager hot path (as torchvision registers its ops' autograd): a training step
// calls the compiled ops through torch.ops with no Python autograd.Function around them, and their backward
// nodes run in C++.  Measured (docs/RESULTS.md, benchmarks/results): a Python Function costs ~40 µs per gate per
// step in forward plus backward, most of it the PyNode backward, the engine's GIL round trip and the argument
// tuples; the kernels themselves take ~12 µs on a (128, 150) activation.
//
// The kernels are device-generic: they redispatch below autograd to the CPU or CUDA kernels of the same ops.
// Only the compiled backends take this path (fastbayes.ops decides, per resolved backend); the reference and
// Triton backends keep their Python Functions, and torch.compile traces the torch.library custom ops.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <mutex>
#include <string>
#include <vector>

#include "common/backward_hint.h"
#include "common/kl_with_grad.h"

namespace fastbayes {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename T>
at::Tensor clamp_grad_cpu(const at::Tensor& grad, const at::Tensor& input, double lo, double hi) {
  at::Tensor out = at::empty_like(grad);
  const T* g = grad.data_ptr<T>();
  const T* x = input.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t i = 0, n = grad.numel(); i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    o[i] = (v >= lo && v <= hi) ? g[i] : T(0);
  }
  return out;
}

// torch.clamp's gradient: ``grad`` where lo <= ``input`` <= hi, zero where the clamp cut.  On the CPU one loop
// (the per-unit vectors of a gate are short, and five small ATen calls cost ~10 µs in a training step).
at::Tensor clamp_grad(const at::Tensor& grad, const at::Tensor& input, double lo, double hi) {
  if (grad.is_cpu() && input.is_cpu() && grad.is_contiguous() && input.is_contiguous() &&
      grad.sizes() == input.sizes() && grad.scalar_type() == input.scalar_type()) {
    if (grad.scalar_type() == at::kFloat) return clamp_grad_cpu<float>(grad, input, lo, hi);
    if (grad.scalar_type() == at::kDouble) return clamp_grad_cpu<double>(grad, input, lo, hi);
  }
  return at::where(input.ge(lo).logical_and_(input.le(hi)), grad, at::zeros({}, grad.options()));
}

// y = x·θ through the kernels of fastbayes_C::lognormal_noise(_backward), shared by the op's autograd and the
// gate's.  ``raw`` (the gate's unclamped log σ, or undefined): where it lies outside [lo, hi] the clamp cut it,
// and ∂/∂log σ is zero there (torch.clamp's gradient).
at::Tensor noise_forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mu, const at::Tensor& log_sigma,
                         const std::optional<at::Tensor>& mask, double a, double b, int64_t dim,
                         c10::string_view granularity, int64_t seed, int64_t offset, const at::Tensor& raw,
                         double lo, double hi) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastbayes_C::lognormal_noise", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, double, double, int64_t,
                                               c10::string_view, int64_t, int64_t)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  at::Tensor y = op.call(x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset);
  ctx->save_for_backward({x, mu, log_sigma, mask.has_value() ? *mask : at::Tensor(), raw});
  ctx->saved_data["a"] = a;
  ctx->saved_data["b"] = b;
  ctx->saved_data["dim"] = dim;
  ctx->saved_data["granularity"] = std::string(granularity);
  ctx->saved_data["seed"] = seed;
  ctx->saved_data["offset"] = offset;
  ctx->saved_data["lo"] = lo;
  ctx->saved_data["hi"] = hi;
  return y;
}

// (dx, dμ, d log σ) followed by ``extra`` undefined gradients for the non-tensor arguments
variable_list noise_backward(AutogradContext* ctx, const variable_list& grads, int extra) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastbayes_C::lognormal_noise_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const std::optional<at::Tensor>&, double, double, int64_t, c10::string_view, int64_t, int64_t)>();
  const auto saved = ctx->get_saved_variables();
  const std::optional<at::Tensor> mask = saved[3].defined() ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
  const std::string granularity = ctx->saved_data["granularity"].toStringRef();
  auto [dx, dmu, dls] =
      op.call(grads[0].contiguous(), saved[0], saved[1], saved[2], mask, ctx->saved_data["a"].toDouble(),
              ctx->saved_data["b"].toDouble(), ctx->saved_data["dim"].toInt(), granularity,
              ctx->saved_data["seed"].toInt(), ctx->saved_data["offset"].toInt());
  if (saved[4].defined()) {
    dls = clamp_grad(dls, saved[4], ctx->saved_data["lo"].toDouble(), ctx->saved_data["hi"].toDouble());
  }
  variable_list out{dx, dmu, dls};
  for (int i = 0; i < extra; ++i) out.emplace_back();
  return out;
}

class LognormalNoiseFn : public torch::autograd::Function<LognormalNoiseFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mu,
                            const at::Tensor& log_sigma, const std::optional<at::Tensor>& mask, double a, double b,
                            int64_t dim, c10::string_view granularity, int64_t seed, int64_t offset) {
    return noise_forward(ctx, x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset, at::Tensor(), 0.0, 0.0);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return noise_backward(ctx, grads, 7); }
};

// The LogNormalGate's training forward: log σ clamped into [log_sigma_min, log_sigma_max] (both official codes'
// forward clamp), then y = x·θ — one node instead of a clamp node and the noise node (measured: the clamp node is
// ~3 % of a BMRS MLP training step).  Same kernels, same bits.
class LognormalGateFn : public torch::autograd::Function<LognormalGateFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mu,
                            const at::Tensor& log_sigma, const std::optional<at::Tensor>& mask, double a, double b,
                            int64_t dim, c10::string_view granularity, int64_t seed, int64_t offset,
                            double log_sigma_min, double log_sigma_max) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor lsc = log_sigma.clamp(log_sigma_min, log_sigma_max);
    return noise_forward(ctx, x, mu, lsc, mask, a, b, dim, granularity, seed, offset, log_sigma, log_sigma_min,
                         log_sigma_max);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return noise_backward(ctx, grads, 9); }
};

// torch.randint(0, 2**62, (), dtype=torch.int64) from torch's default CPU generator, in C++: ATen's CPU
// random_from_to takes random64() % range for ranges >= 2**32.  The gate's Python path draws its seeds that way
// (fastbayes.ops.lognormal.fresh_seed_int); drawing here saves a tensor and a dispatch per gate per step, and a
// test checks that both draws agree under torch.manual_seed.
int64_t fresh_seed() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return static_cast<int64_t>(at::check_generator<at::CPUGeneratorImpl>(gen)->random64() % (uint64_t(1) << 62));
}

// What Function::apply checks before it records a node: the CPU per-element kernel then leaves its draws for the
// backward (common/backward_hint.h).
bool will_backward(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& log_sigma) {
  return at::GradMode::is_enabled() && (x.requires_grad() || mu.requires_grad() || log_sigma.requires_grad());
}

at::Tensor lognormal_gate_autograd(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& log_sigma,
                                   const std::optional<at::Tensor>& mask, double a, double b, int64_t dim,
                                   c10::string_view granularity, int64_t seed, int64_t offset, double log_sigma_min,
                                   double log_sigma_max) {
  // contiguous here rather than in Python: four Python calls fewer per gate per step; seed -1: draw one here
  const ForwardWillBackward hint(will_backward(x, mu, log_sigma));
  return LognormalGateFn::apply(x.contiguous(), mu.contiguous(), log_sigma.contiguous(),
                                mask.has_value() ? std::optional<at::Tensor>(mask->contiguous()) : std::nullopt, a, b,
                                dim, granularity, seed == -1 ? fresh_seed() : seed, offset, log_sigma_min,
                                log_sigma_max);
}

at::Tensor lognormal_noise_autograd(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& log_sigma,
                                    const std::optional<at::Tensor>& mask, double a, double b, int64_t dim,
                                    c10::string_view granularity, int64_t seed, int64_t offset) {
  const ForwardWillBackward hint(will_backward(x, mu, log_sigma));
  return LognormalNoiseFn::apply(x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset);
}

// y = x·ξ, ξ ~ Bern(θ): the kernels of fastbayes_C::bernoulli_gate(_backward) (straight-through θ gradient).
class BernoulliGateFn : public torch::autograd::Function<BernoulliGateFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& theta,
                            const std::optional<at::Tensor>& mask, int64_t dim, int64_t seed, int64_t offset) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastbayes_C::bernoulli_gate", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&, int64_t, int64_t, int64_t)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(x, theta, mask, dim, seed, offset);
    ctx->save_for_backward({x, theta, mask.has_value() ? *mask : at::Tensor()});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastbayes_C::bernoulli_gate_backward", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(
                                   const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&, int64_t, int64_t, int64_t)>();
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> mask = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    auto [dx, dtheta] = op.call(grads[0].contiguous(), saved[0], saved[1], mask, ctx->saved_data["dim"].toInt(),
                                ctx->saved_data["seed"].toInt(), ctx->saved_data["offset"].toInt());
    return {dx, dtheta, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor bernoulli_gate_autograd(const at::Tensor& x, const at::Tensor& theta, const std::optional<at::Tensor>& mask,
                                   int64_t dim, int64_t seed, int64_t offset) {
  return BernoulliGateFn::apply(x, theta, mask, dim, seed, offset);
}

// fastbayes.kl_loss's flat form: Σ_i w_i · KL_i over the units of several gates, log σ clamped into
// [log_sigma_min, log_sigma_max] (both official codes' forward clamp) — one node in the graph instead of cat, clamp,
// gate_stats and dot, each with its own backward node.  Same kernels, same order, so the same bits.
class KlLossFn : public torch::autograd::Function<KlLossFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList mu, at::TensorList log_sigma,
                            const at::Tensor& weights, double a, double b, double log_sigma_min,
                            double log_sigma_max) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastbayes_C::gate_stats", "")
                               .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                   const at::Tensor&, const at::Tensor&, double, double)>();
    TORCH_CHECK_VALUE(!mu.empty() && mu.size() == log_sigma.size(),
                      "kl_loss needs as many log_sigma tensors as mu tensors (at least one), got ", mu.size(),
                      " and ", log_sigma.size());
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor m = mu.size() == 1 ? mu[0] : at::cat(mu);
    const at::Tensor ls = log_sigma.size() == 1 ? log_sigma[0] : at::cat(log_sigma);
    const at::Tensor lsc = ls.clamp(log_sigma_min, log_sigma_max).to(m.scalar_type());
    std::vector<int64_t> sizes;
    for (const auto& t : mu) sizes.push_back(t.numel());
    ctx->saved_data["sizes"] = sizes;
    ctx->saved_data["lo"] = log_sigma_min;
    ctx->saved_data["hi"] = log_sigma_max;
    if (m.is_cpu()) {  // KL and its gradients in one pass; the backward only scales them
      auto [kl, dmu, dls] = kl_with_grad_cpu(m, lsc, a, b);
      ctx->save_for_backward({m, ls, lsc, weights, dmu, dls});
      return at::dot(kl, weights);
    }
    const at::Tensor kl = std::get<0>(op.call(m, lsc, a, b));
    ctx->save_for_backward({m, ls, lsc, weights});
    ctx->saved_data["a"] = a;
    ctx->saved_data["b"] = b;
    return at::dot(kl, weights);
  }

  // The CPU backward as one loop over the units, straight into each gate's gradient tensors: the same roundings
  // as the op-by-op form below (w·grad in the weights' dtype, then the float64 product with ∂KL rounded once to
  // each output's dtype, zero where the clamp cut), with none of its ~12 small ATen calls.
  template <typename W, typename M, typename L>
  static void cpu_backward_loop(const std::vector<at::Tensor>& saved, const at::Tensor& grad,
                                const std::vector<int64_t>& sizes, double lo, double hi, variable_list& out) {
    const W g = grad.to(saved[3].scalar_type()).item<W>();
    const W* w = saved[3].data_ptr<W>();
    const L* ls = saved[1].data_ptr<L>();
    const double* dmu64 = saved[4].data_ptr<double>();
    const double* dls64 = saved[5].data_ptr<double>();
    int64_t i = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
      M* dm = out[k].data_ptr<M>();
      L* dl = out[sizes.size() + k].data_ptr<L>();
      for (int64_t j = 0; j < sizes[k]; ++j, ++i) {
        const double gk = static_cast<double>(static_cast<W>(w[i] * g));
        dm[j] = static_cast<M>(gk * dmu64[i]);
        // the clamp's dtype round trip of the op-by-op form: float64 → log σ's compute dtype (mu's) → log σ's own
        const double l = static_cast<double>(ls[i]);
        dl[j] = (l >= lo && l <= hi) ? static_cast<L>(static_cast<M>(gk * dls64[i])) : L(0);
      }
    }
  }

  static variable_list cpu_backward(const std::vector<at::Tensor>& saved, const at::Tensor& grad,
                                    const std::vector<int64_t>& sizes, double lo, double hi) {
    const at::Tensor &m = saved[0], &ls = saved[1], &w = saved[3];
    variable_list out;
    out.reserve(2 * sizes.size() + 5);
    for (auto n : sizes) out.push_back(at::empty({n}, m.options()));
    for (auto n : sizes) out.push_back(at::empty({n}, ls.options()));
    const auto mt = m.scalar_type(), lt = ls.scalar_type(), wt = w.scalar_type();
    if (wt == at::kFloat && mt == at::kFloat && lt == at::kFloat) {
      cpu_backward_loop<float, float, float>(saved, grad, sizes, lo, hi, out);
    } else if (wt == at::kDouble && mt == at::kDouble && lt == at::kDouble) {
      cpu_backward_loop<double, double, double>(saved, grad, sizes, lo, hi, out);
    } else {
      return {};  // mixed dtypes: the op-by-op form
    }
    for (int i = 0; i < 5; ++i) out.emplace_back();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastbayes_C::gate_stats_backward", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&, double, double)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &m = saved[0], &ls = saved[1], &lsc = saved[2], &w = saved[3];
    const double lo = ctx->saved_data["lo"].toDouble(), hi = ctx->saved_data["hi"].toDouble();
    // the backward of dot (grad·w), of gate_stats, of clamp (gradient where lo <= log σ <= hi), of cat (split)
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    if (saved.size() == 6 && grads[0].numel() == 1) {
      auto out = cpu_backward(saved, grads[0], sizes, lo, hi);
      if (!out.empty()) return out;
    }
    const at::Tensor gk = w * grads[0];
    at::Tensor dmu, dlsc;
    if (saved.size() == 6) {  // gate_stats_backward's float64 product grad·∂KL, rounded once
      const at::Tensor g64 = gk.to(at::kDouble);
      dmu = (g64 * saved[4]).to(m.scalar_type());
      dlsc = (g64 * saved[5]).to(lsc.scalar_type());
    } else {
      std::tie(dmu, dlsc) = op.call(gk, m, lsc, ctx->saved_data["a"].toDouble(), ctx->saved_data["b"].toDouble());
    }
    const at::Tensor dls = clamp_grad(dlsc.to(ls.scalar_type()), ls, lo, hi);
    variable_list out;
    out.reserve(2 * sizes.size() + 5);
    if (sizes.size() == 1) {
      out.push_back(dmu);
      out.push_back(dls);
    } else {
      for (auto& t : dmu.split_with_sizes(sizes)) out.push_back(t);
      for (auto& t : dls.split_with_sizes(sizes)) out.push_back(t);
    }
    for (int i = 0; i < 5; ++i) out.emplace_back();
    return out;
  }
};

at::Tensor kl_loss_autograd(at::TensorList mu, at::TensorList log_sigma, const at::Tensor& weights, double a,
                            double b, double log_sigma_min, double log_sigma_max) {
  return KlLossFn::apply(mu, log_sigma, weights, a, b, log_sigma_min, log_sigma_max);
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_IMPL(fastbayes_C, Autograd, m) {
  m.impl("lognormal_noise", &fastbayes::lognormal_noise_autograd);
  m.impl("lognormal_gate", &fastbayes::lognormal_gate_autograd);
  m.impl("bernoulli_gate", &fastbayes::bernoulli_gate_autograd);
  m.impl("kl_loss", &fastbayes::kl_loss_autograd);
}
