// Fused WAME step for CPU tensors: one pass over memory per element, OpenMP threads via at::parallel_for.
//
// Each element does exactly what wame_dist.optim.wame._single_tensor_wame does with torch ops, in the same
// order and with the same roundings (fp32/fp64), so that both agree to within 2 ulp: see the comments that
// name the torch op each line mirrors. Half and bfloat16 are computed in float and rounded once at the end.
// Both variants: Algorithm 1, and (kKeras) the authors' Keras code: zeta moves unclipped, the clipped value
// is averaged into z and the step scaled by clipped / z; weight_sign remembers the weight's sign instead of
// the gradient's. theta_decay is alpha or the Keras beta_2; lr is decoupled decay's rate, step_size the
// step's (equal in Algorithm 1; the Keras variant's bias-corrected rate).
//
// torch.amp's fused-optimizer protocol: a set found_inf skips the step (nothing is written), and grad_scale's
// reciprocal (rounded to float as GradScaler.unscale_ rounds it) multiplies each gradient as it is read (the
// gradient in memory stays scaled); without a grad_scale the factor is 1, an exact no-op.
//
// Built at first use by wame_dist/optim/cpu_kernel.py with -O3 -march=native -fno-math-errno
// (so sqrt vectorises) and -ffp-contract=off (so gcc adds no fused multiply-adds torch does not use).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

struct Hyper {
  double lr, step_size, alpha, theta_decay, eta_minus, eta_plus, zeta_min, zeta_max, eps, weight_decay,
      inv_grad_scale;
  bool weight_sign;
};

enum Decay { kNoDecay = 0, kL2 = 1, kDecoupled = 2 };

template <typename T, bool kMaximize, int kDecay, bool kLiteral, bool kKeras, bool kWeightSign>
void wame_range(T* __restrict__ w, const T* __restrict__ g, int8_t* __restrict__ prev, T* __restrict__ zeta,
                T* __restrict__ z, T* __restrict__ theta, int64_t begin, int64_t end, const Hyper& h) {
  using A = at::opmath_type<T>;
  const A lr = static_cast<A>(h.lr), wd = static_cast<A>(h.weight_decay);
  const A decay = static_cast<A>(1.0 - h.lr * h.weight_decay);
  const A one_minus_alpha = static_cast<A>(1.0 - h.alpha);
  const A theta_decay = static_cast<A>(h.theta_decay), one_minus_theta_decay = static_cast<A>(1.0 - h.theta_decay);
  const A eta_minus = static_cast<A>(h.eta_minus), eta_plus = static_cast<A>(h.eta_plus);
  const A zeta_min = static_cast<A>(h.zeta_min), zeta_max = static_cast<A>(h.zeta_max);
  const A eps = static_cast<A>(h.eps), neg_step_size = static_cast<A>(-h.step_size);
  const A inv_grad_scale = static_cast<A>(h.inv_grad_scale);
  for (int64_t i = begin; i < end; ++i) {
    A grad = static_cast<A>(g[i]) * inv_grad_scale;
    A weight = static_cast<A>(w[i]);
    A weight_before_sign = A(0);  // sign(param) before any decay: only the weight-sign variant reads it
    if (kWeightSign) weight_before_sign = static_cast<A>(weight > A(0)) - static_cast<A>(weight < A(0));
    if (kMaximize) grad = -grad;
    if (kDecay == kL2) grad = std::fma(weight, wd, grad);   // grad.add(param, alpha=wd)
    if (kDecay == kDecoupled) weight = weight * decay;      // param.mul_(1 - lr * wd)
    // Written without branches (selects only) so that gcc vectorises the loop.
    const A sign = static_cast<A>(grad > A(0)) - static_cast<A>(grad < A(0));  // torch.sign; NaN -> 0
    const A agreement = sign * static_cast<A>(prev[i]);
    A zt = static_cast<A>(zeta[i]);
    A grown = zt * eta_plus;
    A shrunk = zt * eta_minus;
    if (!kKeras) {
      grown = grown > zeta_max ? zeta_max : grown;
      shrunk = shrunk < zeta_min ? zeta_min : shrunk;
    }
    zt = agreement > A(0) ? grown : zt;
    zt = agreement < A(0) ? shrunk : zt;
    A used = zt;  // Keras: zeta.clamp(zeta_min, zeta_max); NaN stays NaN as in torch.clamp
    if (kKeras) {
      used = used < zeta_min ? zeta_min : used;
      used = used > zeta_max ? zeta_max : used;
    }
    A zz = static_cast<A>(z[i]);
    zz = std::fma(one_minus_alpha, used - zz, zz);          // z.lerp_(zeta or clipped, 1 - alpha)
    const A factor = kKeras ? used / zz : zz;               // clipped.div_(z), or z
    A th = static_cast<A>(theta[i]) * theta_decay;          // theta.mul_(theta_decay)
    th = std::fma(one_minus_theta_decay * grad, grad, th);  // .addcmul_(grad, grad, value=1 - theta_decay)
    const A denom = (kLiteral ? th : std::sqrt(th)) + eps;  // theta(.sqrt()).add(eps)
    weight = weight + neg_step_size * (factor * grad) / denom;  // param.addcdiv_(factor * grad, denom, -step_size)
    w[i] = static_cast<T>(weight);
    prev[i] = static_cast<int8_t>(kWeightSign ? weight_before_sign : sign);
    zeta[i] = static_cast<T>(zt);
    z[i] = static_cast<T>(zz);
    theta[i] = static_cast<T>(th);
  }
}

template <typename T, bool kMaximize, int kDecay>
void wame_tensor_decay(T* w, const T* g, int8_t* prev, T* zeta, T* z, T* theta, int64_t n, const Hyper& h,
                       bool literal, bool keras) {
  // Grains of 64 KiB elements: large enough to amortise thread wake-up, small enough to balance.
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    if (keras && h.weight_sign) {
      wame_range<T, kMaximize, kDecay, false, true, true>(w, g, prev, zeta, z, theta, begin, end, h);
    } else if (keras) {
      wame_range<T, kMaximize, kDecay, false, true, false>(w, g, prev, zeta, z, theta, begin, end, h);
    } else if (literal) {
      wame_range<T, kMaximize, kDecay, true, false, false>(w, g, prev, zeta, z, theta, begin, end, h);
    } else {
      wame_range<T, kMaximize, kDecay, false, false, false>(w, g, prev, zeta, z, theta, begin, end, h);
    }
  });
}

template <typename T>
void wame_tensor(T* w, const T* g, int8_t* prev, T* zeta, T* z, T* theta, int64_t n, const Hyper& h,
                 bool decoupled, bool literal, bool maximize, bool keras) {
  const int decay = h.weight_decay == 0.0 ? kNoDecay : (decoupled ? kDecoupled : kL2);
#define WAME_DECAY_CASE(MAX, DECAY) \
  if (maximize == MAX && decay == DECAY) return wame_tensor_decay<T, MAX, DECAY>(w, g, prev, zeta, z, theta, n, h, literal, keras);
  WAME_DECAY_CASE(false, kNoDecay)
  WAME_DECAY_CASE(false, kL2)
  WAME_DECAY_CASE(false, kDecoupled)
  WAME_DECAY_CASE(true, kNoDecay)
  WAME_DECAY_CASE(true, kL2)
  WAME_DECAY_CASE(true, kDecoupled)
#undef WAME_DECAY_CASE
}

void check_row(const at::Tensor& param, const std::vector<at::Tensor>& row) {
  TORCH_CHECK(param.device().is_cpu(), "wame_cpu: tensors must be on the CPU");
  TORCH_CHECK(param.is_non_overlapping_and_dense(), "wame_cpu: parameters must be dense");
  for (const auto& t : row) {
    TORCH_CHECK(t.device().is_cpu() && t.numel() == param.numel() && t.strides() == param.strides(),
                "wame_cpu: gradient and state must be CPU tensors with the parameter's shape and strides");
  }
}

}  // namespace

void wame_step_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> prev_signs,
                std::vector<at::Tensor> zetas, std::vector<at::Tensor> zs, std::vector<at::Tensor> thetas,
                double lr, double step_size, double alpha, double theta_decay, double eta_minus, double eta_plus,
                double zeta_min, double zeta_max, double eps, double weight_decay, bool decoupled_weight_decay,
                bool literal, bool maximize, bool keras, bool weight_sign,
                const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;  // torch.amp skips this step
  const double inv_grad_scale =
      grad_scale.has_value() ? static_cast<double>(static_cast<float>(1.0 / grad_scale->item<double>())) : 1.0;
  const Hyper h{lr,       step_size,    alpha,          theta_decay, eta_minus, eta_plus, zeta_min,
                zeta_max, eps,          weight_decay, inv_grad_scale, weight_sign};
  for (size_t i = 0; i < params.size(); ++i) {
    auto& p = params[i];
    check_row(p, {grads[i], prev_signs[i], zetas[i], zs[i], thetas[i]});
    TORCH_CHECK(prev_signs[i].scalar_type() == at::kChar, "wame_cpu: prev_sign must be int8");
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type() && zetas[i].scalar_type() == p.scalar_type() &&
                    zs[i].scalar_type() == p.scalar_type() && thetas[i].scalar_type() == p.scalar_type(),
                "wame_cpu: gradient and state must have the parameter's dtype");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "wame_cpu", [&] {
      wame_tensor<scalar_t>(p.data_ptr<scalar_t>(), grads[i].data_ptr<scalar_t>(),
                            prev_signs[i].data_ptr<int8_t>(), zetas[i].data_ptr<scalar_t>(),
                            zs[i].data_ptr<scalar_t>(), thetas[i].data_ptr<scalar_t>(), p.numel(), h,
                            decoupled_weight_decay, literal, maximize, keras);
    });
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("wame_step_", &wame_step_, "Fused in-place WAME step over lists of CPU tensors", py::arg("params"),
        py::arg("grads"), py::arg("prev_signs"), py::arg("zetas"), py::arg("zs"), py::arg("thetas"), py::kw_only(),
        py::arg("lr"), py::arg("step_size"), py::arg("alpha"), py::arg("theta_decay"), py::arg("eta_minus"),
        py::arg("eta_plus"), py::arg("zeta_min"), py::arg("zeta_max"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("decoupled_weight_decay"), py::arg("literal"), py::arg("maximize"), py::arg("keras"),
        py::arg("weight_sign"), py::arg("grad_scale") = py::none(),
        py::arg("found_inf") = py::none());
}
