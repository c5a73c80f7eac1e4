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
// Compact state (WAME(state_dtype="bf16"), float32 parameters only): zeta, z and theta are read from bfloat16
// (exact) and written back rounded stochastically in registers, bit for bit as
// wame_dist/optim/compact_state.py::stochastic_round_ does with torch ops: element i of a tensor placed at
// offset o of row r, at step t, adds 16 bits of lowbias32((key(t, r, k) + o + i) mod 2**32) to the
// float32's bits and keeps the high 16 (an infinity's low bits are 0: it stays); NaN is stored as 0x7FC0.
// Which k and which half each state takes: compact_state.NOISE. state_steps, state_rows and state_offsets
// give each compact tensor's t, r and o.
//
// Built at first use by wame_dist/optim/cpu_kernel.py with -O3 -march=native -mprefer-vector-width=512
// (AVX-512 where the CPU has it: the compact path's hashing is compute-bound), -fno-math-errno (so sqrt
// vectorises) and -ffp-contract=off (so gcc adds no fused multiply-adds torch does not use).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <optional>
#include <vector>

namespace {

// Chris Wellons' lowbias32, as wame_dist/hashing.py computes it.
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Folds a 64-bit value into a 32-bit key, one lowbias32 per 32-bit word (wame_dist/hashing.py::chain).
inline uint32_t chain(uint32_t key, uint64_t value) {
  key = lowbias32(key + static_cast<uint32_t>(value));
  return lowbias32(key + static_cast<uint32_t>(value >> 32));
}

inline float bf16_bits_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Stochastic rounding of float32 x to bfloat16 with 16 random bits `noise` (in the low 16 bits).
inline uint16_t float_to_bf16_stochastic(float x, uint32_t noise) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const bool nan = (u & 0x7FFFFFFFU) > 0x7F800000U;
  return nan ? uint16_t(0x7FC0) : static_cast<uint16_t>((u + (noise & 0xFFFFU)) >> 16);
}

// The stored form of zeta, z and theta: the parameter's type T, or (kCompact) bfloat16's bits.
template <typename T, bool kCompact>
using StateT = std::conditional_t<kCompact, uint16_t, T>;

// The two keys of a tensor's rounding at one step, its offset added: element i draws lowbias32(pair + i),
// whose low and high halves round zeta and z, and lowbias32(theta + i), whose low half rounds theta
// (compact_state.NOISE).
struct Keys {
  uint32_t pair, theta;
};

// hashing.key_of(step, row, k) + offset, for k = 0, 1 (mod 2**32).
inline Keys keys_of(int64_t step, int64_t row, int64_t offset) {
  const uint32_t base = chain(chain(0, static_cast<uint64_t>(step)), static_cast<uint64_t>(row));
  const uint32_t shift = static_cast<uint32_t>(offset);
  return Keys{chain(base, 0) + shift, chain(base, 1) + shift};
}

struct Hyper {
  double lr, step_size, alpha, theta_decay, eta_minus, eta_plus, zeta_min, zeta_max, eps, weight_decay,
      inv_grad_scale;
  bool weight_sign;
};

enum Decay { kNoDecay = 0, kL2 = 1, kDecoupled = 2 };

template <typename T, bool kCompact, typename A>
inline A load_state(const StateT<T, kCompact>* s, int64_t i) {
  if constexpr (kCompact) {
    return bf16_bits_to_float(s[i]);
  } else {
    return static_cast<A>(s[i]);
  }
}

template <typename T, bool kCompact, typename A>
inline void store_state(StateT<T, kCompact>* s, int64_t i, A value, uint32_t noise) {
  if constexpr (kCompact) {
    s[i] = float_to_bf16_stochastic(value, noise);
  } else {
    s[i] = static_cast<T>(value);
  }
}

template <typename T, bool kCompact, bool kMaximize, int kDecay, bool kLiteral, bool kKeras, bool kWeightSign>
void wame_range(T* __restrict__ w, const T* __restrict__ g, int8_t* __restrict__ prev,
                StateT<T, kCompact>* __restrict__ zeta, StateT<T, kCompact>* __restrict__ z,
                StateT<T, kCompact>* __restrict__ theta, int64_t begin, int64_t end, const Hyper& h,
                const Keys& keys) {
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
    A zt = load_state<T, kCompact, A>(zeta, i);
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
    A zz = load_state<T, kCompact, A>(z, i);
    zz = std::fma(one_minus_alpha, used - zz, zz);          // z.lerp_(zeta or clipped, 1 - alpha)
    const A factor = kKeras ? used / zz : zz;               // clipped.div_(z), or z
    A th = load_state<T, kCompact, A>(theta, i) * theta_decay;          // theta.mul_(theta_decay)
    th = std::fma(one_minus_theta_decay * grad, grad, th);  // .addcmul_(grad, grad, value=1 - theta_decay)
    const A denom = (kLiteral ? th : std::sqrt(th)) + eps;  // theta(.sqrt()).add(eps)
    weight = weight + neg_step_size * (factor * grad) / denom;  // param.addcdiv_(factor * grad, denom, -step_size)
    w[i] = static_cast<T>(weight);
    prev[i] = static_cast<int8_t>(kWeightSign ? weight_before_sign : sign);
    uint32_t pair_noise = 0, theta_noise = 0;  // the keyed bits; unused (and optimised away) in full precision
    if constexpr (kCompact) {
      pair_noise = lowbias32(keys.pair + static_cast<uint32_t>(i));
      theta_noise = lowbias32(keys.theta + static_cast<uint32_t>(i));
    }
    store_state<T, kCompact, A>(zeta, i, zt, pair_noise);
    store_state<T, kCompact, A>(z, i, zz, pair_noise >> 16);
    store_state<T, kCompact, A>(theta, i, th, theta_noise);
  }
}

template <typename T, bool kCompact, bool kMaximize, int kDecay>
void wame_tensor_decay(T* w, const T* g, int8_t* prev, StateT<T, kCompact>* zeta, StateT<T, kCompact>* z,
                       StateT<T, kCompact>* theta, int64_t n, const Hyper& h, const Keys& keys, bool literal,
                       bool keras) {
  // Grains of 64 KiB elements: large enough to amortise thread wake-up, small enough to balance.
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    if (keras && h.weight_sign) {
      wame_range<T, kCompact, kMaximize, kDecay, false, true, true>(w, g, prev, zeta, z, theta, begin, end, h, keys);
    } else if (keras) {
      wame_range<T, kCompact, kMaximize, kDecay, false, true, false>(w, g, prev, zeta, z, theta, begin, end, h, keys);
    } else if (literal) {
      wame_range<T, kCompact, kMaximize, kDecay, true, false, false>(w, g, prev, zeta, z, theta, begin, end, h, keys);
    } else {
      wame_range<T, kCompact, kMaximize, kDecay, false, false, false>(w, g, prev, zeta, z, theta, begin, end, h, keys);
    }
  });
}

template <typename T, bool kCompact>
void wame_tensor(T* w, const T* g, int8_t* prev, StateT<T, kCompact>* zeta, StateT<T, kCompact>* z,
                 StateT<T, kCompact>* theta, int64_t n, const Hyper& h, const Keys& keys, bool decoupled,
                 bool literal, bool maximize, bool keras) {
  const int decay = h.weight_decay == 0.0 ? kNoDecay : (decoupled ? kDecoupled : kL2);
#define WAME_DECAY_CASE(MAX, DECAY)                                                                       \
  if (maximize == MAX && decay == DECAY)                                                                 \
    return wame_tensor_decay<T, kCompact, MAX, DECAY>(w, g, prev, zeta, z, theta, n, h, keys, literal, keras);
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
                const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                const std::vector<int64_t>& state_steps, const std::vector<int64_t>& state_rows,
                const std::vector<int64_t>& state_offsets) {
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;  // torch.amp skips this step
  const double inv_grad_scale =
      grad_scale.has_value() ? static_cast<double>(static_cast<float>(1.0 / grad_scale->item<double>())) : 1.0;
  const Hyper h{lr,       step_size,    alpha,          theta_decay, eta_minus, eta_plus, zeta_min,
                zeta_max, eps,          weight_decay, inv_grad_scale, weight_sign};
  TORCH_CHECK(state_steps.size() == state_rows.size() && state_rows.size() == state_offsets.size() &&
                  (state_steps.empty() || state_steps.size() == params.size()),
              "wame_cpu: state_steps, state_rows and state_offsets hold one value per parameter");
  for (size_t i = 0; i < params.size(); ++i) {
    auto& p = params[i];
    check_row(p, {grads[i], prev_signs[i], zetas[i], zs[i], thetas[i]});
    TORCH_CHECK(prev_signs[i].scalar_type() == at::kChar, "wame_cpu: prev_sign must be int8");
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type(), "wame_cpu: the gradient must have the parameter's dtype");
    const auto state_type = zetas[i].scalar_type();
    TORCH_CHECK(zs[i].scalar_type() == state_type && thetas[i].scalar_type() == state_type,
                "wame_cpu: zeta, z and theta must share one dtype");
    const bool compact = state_type != p.scalar_type();
    if (compact) {
      TORCH_CHECK(p.scalar_type() == at::kFloat && state_type == at::kBFloat16 && p.is_contiguous() &&
                      !state_steps.empty(),
                  "wame_cpu: compact state is bfloat16 state of a contiguous float32 parameter, with its keys' "
                  "state_steps, state_rows and state_offsets");
      const Keys keys = keys_of(state_steps[i], state_rows[i], state_offsets[i]);
      auto bits = [](at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); };
      wame_tensor<float, true>(p.data_ptr<float>(), grads[i].data_ptr<float>(), prev_signs[i].data_ptr<int8_t>(),
                               bits(zetas[i]), bits(zs[i]), bits(thetas[i]), p.numel(), h, keys,
                               decoupled_weight_decay, literal, maximize, keras);
      continue;
    }
    const Keys no_keys{0, 0};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "wame_cpu", [&] {
      wame_tensor<scalar_t, false>(p.data_ptr<scalar_t>(), grads[i].data_ptr<scalar_t>(),
                                   prev_signs[i].data_ptr<int8_t>(), zetas[i].data_ptr<scalar_t>(),
                                   zs[i].data_ptr<scalar_t>(), thetas[i].data_ptr<scalar_t>(), p.numel(), h,
                                   no_keys, decoupled_weight_decay, literal, maximize, keras);
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
        py::arg("found_inf") = py::none(), py::arg("state_steps") = std::vector<int64_t>{},
        py::arg("state_rows") = std::vector<int64_t>{}, py::arg("state_offsets") = std::vector<int64_t>{});
}
