r"""WAME: weight-wise adaptive learning rates with moving average estimator (Mosca & Magoulas, 2017).

Three implementations of one element-wise rule, chosen at one dispatch point (:func:`wame`):

* ``_single_tensor_wame``: a readable loop over parameters, one torch op per line of the algorithm;
* ``_multi_tensor_wame``: the same ops as ``torch._foreach_*`` calls over all parameters of a device and
  dtype; on CPU the tensors are walked in cache-sized slices so each slice stays in cache across the ops;
* ``_fused_wame`` (:mod:`wame_dist.optim.fused`): one pass per element, a C++/OpenMP kernel on CPU and a
  Triton kernel on CUDA.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from wame_dist.optim import _torch_compat, compact_state, eight_bit_state
from wame_dist.optim import fused as _fused

__all__ = ["WAME", "wame"]

#: A piece of a placed parameter (:meth:`WAME.place`): its length, and the row and offset it sits at.
Piece = tuple[int, int, int]

#: The 8-bit state (:mod:`wame_dist.optim.eight_bit_state`); the others are dtypes of zeta, z and theta.
EIGHT_BIT = "8bit"
#: Every ``state_dtype``.
STATE_TYPES = (*compact_state.STATE_DTYPES, EIGHT_BIT)

DENOMINATORS = ("sqrt", "literal")
VARIANTS = ("algorithm1", "keras")
SIGN_SOURCES = ("gradient", "weight")

#: What the arguments left unset (None) become, per variant: the paper's Algorithm 1, and the authors'
#: published Keras code (``eps`` 1e-11, the previous *weight*'s sign, Adam's ``beta_1``/``beta_2``).
VARIANT_DEFAULTS = {
    "algorithm1": {"eps": 1e-8, "sign_source": "gradient", "betas": None},
    "keras": {"eps": 1e-11, "sign_source": "weight", "betas": (0.9, 0.999)},
}

#: The initial value of ``Z``: 0 in Algorithm 1 (line 2), 1 in the Keras code (``K.ones``).
_INITIAL_Z = {"algorithm1": 0.0, "keras": 1.0}

#: Per-parameter state: key -> how to create it lazily from the parameter, the group's variant and the
#: dtype of zeta, z and theta (ZeRO partitions and checkpoints converted by other tools may arrive with some
#: keys missing; each is then created on its own).
_STATE_FACTORIES = {
    "step": lambda p, variant, dtype: _step_counter(0.0),
    "prev_sign": lambda p, variant, dtype: torch.zeros_like(
        p, dtype=torch.int8, memory_format=torch.preserve_format
    ),
    "zeta": lambda p, variant, dtype: torch.ones_like(p, dtype=dtype, memory_format=torch.preserve_format),
    "z": lambda p, variant, dtype: torch.full_like(
        p, _INITIAL_Z[variant], dtype=dtype, memory_format=torch.preserve_format
    ),
    "theta": lambda p, variant, dtype: torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format),
}
STATE_KEYS = tuple(_STATE_FACTORIES)


def _step_counter(value: float) -> Tensor:
    """The per-parameter ``step`` counter holding ``value``: a 0-dim tensor of torch.optim's scalar dtype."""
    return torch.tensor(value, dtype=_torch_compat.scalar_dtype())


#: Elements per slice when the multi-tensor path walks CPU tensors: the ~10 live float slices of 512 KiB
#: stay in a core's L2/L3 across all ops of the rule instead of streaming through DRAM once per op.
_CPU_SLICE_ELEMENTS = 1 << 17


class WAME(Optimizer):
    r"""Implements WAME, Algorithm 1 of Mosca & Magoulas, "Training Convolutional Networks with
    Weight-wise Adaptive Learning Rates", ESANN 2017.

    .. math::
       \begin{aligned}
       &\textbf{input}: \lambda \text{ (lr)}, \alpha, (\eta_-, \eta_+), (\zeta_{min}, \zeta_{max}),
            \epsilon, \text{weight decay } \omega, \text{ maximize}                              \\
       &\textbf{state}: s_0 = 0 \text{ (int8)}, \ \zeta_0 = 1, \ Z_0 = 0, \ \theta_0 = 0          \\
       &\textbf{for } t = 1, 2, \ldots:                                                          \\
       &\quad g_t = \pm\nabla_w f_t(w_{t-1}) \quad (- \text{ if maximize})                       \\
       &\quad \textbf{if } \omega \ne 0: \textbf{ if decoupled: } w_{t-1} \leftarrow w_{t-1}(1-\lambda\omega)
            \textbf{ else } g_t \leftarrow g_t + \omega w_{t-1}                                  \\
       &\quad c = \mathrm{sign}(g_t)\, s_{t-1}                                                   \\
       &\quad \zeta_t = \min(\zeta_{t-1}\eta_+, \zeta_{max}) \text{ where } c > 0;\quad
              \max(\zeta_{t-1}\eta_-, \zeta_{min}) \text{ where } c < 0;\quad
              \zeta_{t-1} \text{ where } c = 0                                                   \\
       &\quad Z_t = \alpha Z_{t-1} + (1-\alpha)\zeta_t                                          \\
       &\quad \theta_t = \alpha\theta_{t-1} + (1-\alpha) g_t^2                                   \\
       &\quad w_t = w_{t-1} - \lambda Z_t g_t / D_t, \qquad
              D_t = \sqrt{\theta_t} + \epsilon \ (\text{"sqrt"}) \ \text{ or } \
              \theta_t + \epsilon \ (\text{"literal"})                                           \\
       &\quad s_t = \mathrm{sign}(g_t)
       \end{aligned}

    ``variant="keras"`` is the rule of the authors' published code (their Keras fork's ``optimizers.WAME``,
    proposed as keras-team/keras pull request 10899), which the paper's experiments ran on. It differs
    from Algorithm 1 in five ways: the stored :math:`\zeta` is not clipped (only the value used is), the
    step is scaled by :math:`\zeta/Z` (as the paper's prose says) with :math:`Z_0 = 1`, the mean square
    decays with :math:`\beta_2` and is divided out with Adam's bias correction, the rate decays as
    Keras's ``decay`` does, and the sign compared with the gradient's is that of the previous *weight*
    (``sign_source="weight"``; ``"gradient"`` is the evident intent). With
    :math:`(\beta_1, \beta_2)` = ``betas``, :math:`\beta_a` = ``alpha``, :math:`d` = ``decay``:

    .. math::
       \begin{aligned}
       &\quad c = \mathrm{sign}(g_t)\, s_{t-1}, \quad
              \zeta_t = \zeta_{t-1}\eta_+ \text{ where } c > 0;\ \zeta_{t-1}\eta_- \text{ where } c < 0;\
              \zeta_{t-1} \text{ elsewhere}                                                   \\
       &\quad \hat\zeta_t = \mathrm{clip}(\zeta_t, \zeta_{min}, \zeta_{max}), \quad
              Z_t = \beta_a Z_{t-1} + (1-\beta_a)\hat\zeta_t, \quad
              \theta_t = \beta_2\theta_{t-1} + (1-\beta_2) g_t^2                           \\
       &\quad \lambda_t = \frac{\lambda}{1 + d(t-1)}\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}, \quad
              w_t = w_{t-1} - \lambda_t \frac{\hat\zeta_t}{Z_t} \frac{g_t}{\sqrt{\theta_t} + \epsilon}, \quad
              s_t = \mathrm{sign}(w_{t-1}) \text{ (or } \mathrm{sign}(g_t))
       \end{aligned}

    (The code computes ``change = prev * g`` and compares it with 0; the product of the signs is the same
    except where that product underflows to 0. Weight decay, absent from the Keras code, acts as in
    Algorithm 1, decoupled decay with the decayed rate :math:`\lambda / (1 + d(t-1))`.)

    ``denominator="sqrt"`` (default) divides by the root of the mean square, as RMSprop does and as the
    paper's section 2.2 reads its divisor; ``"literal"`` is line 11 of Algorithm 1 word for word (its step
    scales like ``1/|g|`` and needs a far smaller ``lr``). ``Z`` multiplies the step, as in Algorithm 1
    (the paper's prose says "divide"). Every operation is element-wise, so a ZeRO partition of a flattened
    parameter gets exactly the update of the whole tensor.

    State per parameter: ``step`` (0-dim float tensor; read only by the Keras variant's bias correction and
    decay), ``prev_sign`` (int8: only the sign of the previous gradient, or weight, is ever read), ``zeta``,
    ``z``, ``theta`` (the parameter's dtype): 13 bytes per fp32 weight, in both variants. With
    ``state_dtype="bf16"`` zeta, z and theta are stored in bfloat16 and rounded back stochastically
    (unbiased, keyed by step and position: reproducible), 7 bytes per weight
    (:mod:`wame_dist.optim.compact_state`). Complex parameters are treated as pairs of independent reals
    (their state has the shape of ``torch.view_as_real(param)``).

    Non-finite gradients are not searched for (that is the loss scaler's job: ``torch.amp.GradScaler`` and
    DeepSpeed skip a step with an overflow before the optimizer sees it). If one arrives anyway, the result
    is defined element by element: ``sign(NaN) = 0``, so a NaN gradient leaves ``zeta`` unchanged, sets
    ``prev_sign`` to 0 and makes ``theta`` and the weight NaN; an infinite gradient moves ``zeta`` by its
    sign as usual, makes ``theta`` ``inf`` and the weight NaN (``inf / inf``). Other elements are unaffected.

    With ``fused=True`` WAME follows torch's fused-optimizer protocol with ``torch.amp.GradScaler``
    (``_step_supports_amp_scaling``): the scaler hands over ``grad_scale`` and ``found_inf`` instead of
    unscaling; a step with ``found_inf`` set changes nothing (no parameter, no state, no ``step``), and
    otherwise the kernel multiplies each gradient by ``1 / grad_scale`` as it reads it (``.grad`` itself
    stays scaled).

    With float16 parameters an ``eps`` below 2**-24 would round to 0; the single-tensor and multi-tensor
    paths then use 2**-24 (the fused kernels compute in float32 and keep ``eps``).

    Args:
        params: parameters or parameter groups (each group may override every hyperparameter below).
        lr: learning rate :math:`\lambda` (float or 0-dim tensor), >= 0.
        alpha: decay of both moving averages :math:`Z` and :math:`\theta`, in [0, 1).
        etas: (eta_minus, eta_plus), the multiplicative decrease and increase of zeta,
            0 < eta_minus < 1 < eta_plus.
        zeta_bounds: (zeta_min, zeta_max), 0 < zeta_min <= 1 <= zeta_max.
        eps: added to the denominator, >= 0; guards the first step of a weight whose gradients were all 0.
            Default (None): 1e-8, or 1e-11 for ``variant="keras"`` (the Keras code's).
        weight_decay: :math:`\omega` >= 0, an L2 term added to the gradient, or with
            ``decoupled_weight_decay=True`` a factor ``1 - lr * weight_decay`` applied to the weight first.
        variant: ``"algorithm1"`` (the paper's Algorithm 1) or ``"keras"`` (the authors' code), see above.
        sign_source: ``"weight"`` or ``"gradient"``: whose previous sign the Keras variant compares the
            gradient's with (default: ``"weight"``, as published). Algorithm 1 takes only ``"gradient"``.
        betas: (beta_1, beta_2) of the Keras variant (default (0.9, 0.999)): beta_2 averages the squared
            gradient, beta_1 enters only the bias correction. Algorithm 1 averages with ``alpha``: None.
        decay: the Keras variant's rate decay ``lr / (1 + decay * (t - 1))``, >= 0 (Algorithm 1: 0).
        denominator: ``"sqrt"`` or ``"literal"``, see above (Keras: ``"sqrt"``).
        maximize: ascend the objective instead of descending it.
        foreach: use the multi-tensor implementation.
        fused: use the fused kernel (C++/OpenMP on CPU, Triton on CUDA). With both ``None`` the fastest
            available implementation is picked: fused, else multi-tensor, else single-tensor.
        state_dtype: ``"fp32"`` (zeta, z, theta in the parameter's dtype) or ``"bf16"`` (in bfloat16,
            updated in the parameter's dtype and rounded back stochastically). Recorded in the state_dict;
            loading one of the other kind is refused.

    Example:
        >>> import torch
        >>> from wame_dist import WAME
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = WAME(model.parameters(), lr=1e-3)
        >>> loss = model(torch.ones(8, 4)).pow(2).mean()
        >>> loss.backward()
        >>> optimizer.step()
        >>> sorted(optimizer.state[model.weight])
        ['prev_sign', 'step', 'theta', 'z', 'zeta']
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        alpha: float = 0.9,
        etas: tuple[float, float] = (0.1, 1.2),
        zeta_bounds: tuple[float, float] = (0.01, 100.0),
        eps: float | None = None,
        weight_decay: float = 0.0,
        *,
        variant: str = "algorithm1",
        sign_source: str | None = None,
        betas: tuple[float, float] | None = None,
        decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        denominator: str = "sqrt",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: str = "fp32",
    ) -> None:
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "etas": tuple(etas),
            "zeta_bounds": tuple(zeta_bounds),
            "eps": eps,
            "weight_decay": weight_decay,
            "variant": variant,
            "sign_source": sign_source,
            "betas": betas,
            "decay": decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "denominator": denominator,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
            "state_dtype": state_dtype,
        }
        validate_hyperparameters(with_variant_defaults(defaults))
        super().__init__(params, defaults)
        self.state_positions: dict[Tensor, list[Piece]] = {}

    def place(self, positions: dict[Tensor, tuple[int, int] | list[Piece]]) -> None:
        """Says where parameters sit in a whole that is the same however it is cut. ``{param: (row,
        offset)}``: element ``e`` of ``param`` is element ``offset + e`` of row ``row``; or ``{param:
        [(length, row, offset), ...]}``: ``param`` (contiguous) is pieces laid end to end, each placed so.
        Only the stochastic rounding of compact state reads it (its bits are keyed by step, row and
        position, see :mod:`wame_dist.optim.compact_state`), so that a parameter cut into ZeRO partitions
        rounds as the whole would on any number of ranks. A parameter not placed is row ``i`` (its index
        among all of this optimizer's parameters), offset 0."""
        for param, where in positions.items():
            pieces = [(param.numel(), *where)] if isinstance(where, tuple) else [tuple(p) for p in where]
            if sum(length for length, _, _ in pieces) != param.numel():
                raise ValueError(f"WAME.place: pieces of {sum(p[0] for p in pieces)} elements for a "
                                 f"parameter of {param.numel()}")  # fmt: skip
            if len(pieces) > 1 and not param.is_contiguous():
                raise ValueError("WAME.place: only a contiguous parameter can be placed in pieces")
            self.state_positions[param] = pieces

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """True for ``fused=True``, as for torch's fused optimizers: ``torch.amp.GradScaler.step`` then sets
        ``grad_scale`` and ``found_inf`` on the optimizer instead of unscaling the gradients itself."""
        return bool(self.defaults["fused"])

    def __getstate__(self) -> dict[str, Any]:
        """What pickling and ``copy.deepcopy`` keep: torch's optimizer state and the places of
        :meth:`place` (keyed by the same parameters, so a deep copy keeps them for its copies)."""
        return {**super().__getstate__(), "state_positions": self.state_positions}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a pickled optimizer, or the state ``load_state_dict`` built, as torch's optimizers do:
        implementation flags missing from a group (a state_dict of an older version or of another writer)
        take the constructor's defaults, a ``step`` saved as a Python number becomes a tensor, and a
        pickle without places has none."""
        super().__setstate__(state)
        self.__dict__.setdefault("state_positions", {})
        for group in self.param_groups:
            for key, default in _FLAG_DEFAULTS.items():
                group.setdefault(key, default)
            group.update(with_variant_defaults(group))
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = _step_counter(float(p_state["step"]))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group like ``torch.optim.Optimizer`` does, then validates its hyperparameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.update(with_variant_defaults(group))
        validate_hyperparameters(group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads state like ``torch.optim.Optimizer`` does, keeping ``prev_sign`` int8 and compact state
        compact; refuses state saved with another ``state_dtype`` (a state_dict without one is ``"fp32"``).

        (The base class casts every floating state to the parameter's dtype; ``prev_sign`` holds only
        -1, 0 and +1, and compact state was saved in its own dtype, so casting back is exact.)
        """
        for number, (ours, saved) in enumerate(zip(self.param_groups, state_dict.get("param_groups", []))):
            theirs = saved.get("state_dtype", _FLAG_DEFAULTS["state_dtype"])
            if theirs != ours["state_dtype"]:
                raise ValueError(
                    f"WAME: parameter group {number} of this state_dict holds state_dtype={theirs!r} state, "
                    f"this optimizer was built with state_dtype={ours['state_dtype']!r}; build it with "
                    f"state_dtype={theirs!r} to load it"
                )
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if group["state_dtype"] == EIGHT_BIT:  # codes, signs and scales back to their dtypes
                    for key, dtype in eight_bit_state.DTYPES.items():
                        if key in state:
                            state[key] = state[key].to(dtype)
                    continue
                if "prev_sign" in state and state["prev_sign"].dtype != torch.int8:
                    state["prev_sign"] = state["prev_sign"].to(torch.int8)
                param = torch.view_as_real(p) if p.is_complex() else p
                dtype = compact_state.storage_dtype(group["state_dtype"], param)
                for key in compact_state.COMPACT_KEYS:
                    if key in state and state[key].dtype != dtype:
                        state[key] = state[key].to(dtype)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """Collects the group's parameters that have gradients, with their gradients, state, positions
        (:meth:`place`) and state dicts (which :meth:`_encode_8bit` writes back into)."""
        params, grads, prev_signs, zetas, zs, thetas, steps, positions, states = ([] for _ in range(9))
        first = 0  # the index of the group's first parameter among all of the optimizer's
        for other in self.param_groups:
            if other is group:
                break
            first += len(other["params"])
        for index, p in enumerate(group["params"], start=first):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "WAME does not support sparse gradients: its per-weight state needs a dense gradient "
                    "(use a dense embedding, or torch.optim.SparseAdam for the sparse parameters)"
                )
            param, grad = (
                (torch.view_as_real(p), torch.view_as_real(p.grad)) if p.is_complex() else (p, p.grad)
            )
            state = self._state_of(p, param, group)
            params.append(param)
            grads.append(grad)
            if group["state_dtype"] == EIGHT_BIT:  # the rule runs on decoded copies
                prev_sign, zeta, z, theta = eight_bit_state.decode(state, param, group)
            else:
                prev_sign, zeta, z, theta = state["prev_sign"], state["zeta"], state["z"], state["theta"]
            prev_signs.append(prev_sign)
            zetas.append(zeta)
            zs.append(z)
            thetas.append(theta)
            steps.append(state["step"])
            positions.append(self.state_positions.get(p, [(p.numel(), index, 0)]))
            states.append(state)
        return params, grads, prev_signs, zetas, zs, thetas, steps, positions, states

    def _state_of(self, p: Tensor, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state of ``p`` (``param``: its real view), each missing key created at its initial value, and
        a ``prev_sign`` widened by a foreign checkpoint loader narrowed back to int8 (exactly)."""
        state = self.state[p]
        if group["state_dtype"] == EIGHT_BIT:
            if "zeta" not in state:
                if param.dtype != torch.float32:
                    raise ValueError(
                        f"WAME(state_dtype='8bit') updates float32 parameters, not {param.dtype}"
                    )
                if _torch_compat.local_tensors([param])[0] is not param:
                    raise ValueError(
                        "WAME(state_dtype='8bit') is not supported for sharded (DTensor, FSDP2) parameters "
                        "yet; use state_dtype='bf16'"
                    )
                state.update(step=_step_counter(0.0), **eight_bit_state.create(param))
            return state
        for key, factory in _STATE_FACTORIES.items():
            if key not in state:
                state[key] = factory(
                    param, group["variant"], compact_state.storage_dtype(group["state_dtype"], param)
                )
        if state["prev_sign"].dtype != torch.int8:
            state["prev_sign"] = state["prev_sign"].to(torch.int8)
        return state

    @torch.no_grad()
    def init_state(self) -> None:
        """Creates the state of every parameter now instead of at its first step.

        DeepSpeed ZeRO-1/2 links optimizer state to parameter fragments once, right after the first step
        of the first group, and misses state that does not exist yet; ``wame_dist.deepspeed.initialize``
        calls this so that ``deepspeed.utils.safe_get_full_optimizer_state`` works for every group.
        """
        for group in self.param_groups:
            for p in group["params"]:
                self._state_of(p, torch.view_as_real(p) if p.is_complex() else p, group)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one WAME step for every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        for group in self.param_groups:
            fresh = all(p not in self.state for p in group["params"])
            if fresh:
                _check_not_replaced_by_fully_shard(group["params"])
            *tensors, positions, states = self._init_group(group)
            if not tensors[0] or (fresh and _is_initialisation_step(group["lr"], tensors[1])):
                continue
            eta_minus, eta_plus = group["etas"]
            zeta_min, zeta_max = group["zeta_bounds"]
            wame(
                *tensors,
                foreach=group["foreach"],
                fused=group["fused"],
                lr=group["lr"],
                alpha=group["alpha"],
                eta_minus=eta_minus,
                eta_plus=eta_plus,
                zeta_min=zeta_min,
                zeta_max=zeta_max,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                variant=group["variant"],
                sign_source=group["sign_source"],
                betas=group["betas"],
                decay=group["decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                denominator=group["denominator"],
                maximize=group["maximize"],
                grad_scale=grad_scale,
                found_inf=found_inf,
                state_positions=positions,
            )
            if group["state_dtype"] == EIGHT_BIT:
                _encode_8bit(group, tensors, positions, states)
        return loss


def _encode_8bit(group: dict[str, Any], tensors: list[list[Tensor]], positions, states) -> None:
    """Writes the decoded state the rule updated (``tensors``, as :meth:`WAME._init_group` collected them)
    back into the 8-bit codes of ``states``, each keyed by its parameter's first place."""
    _, _, prev_signs, zetas, zs, thetas, steps = tensors
    for state, prev_sign, zeta, z, theta, step, placed in zip(
        states, prev_signs, zetas, zs, thetas, steps, positions, strict=True
    ):
        _, row, offset = placed[0]
        eight_bit_state.encode_(state, (prev_sign, zeta, z, theta), group, int(step), row, offset)


def _check_not_replaced_by_fully_shard(params: list[Tensor]) -> None:
    """Raises if FSDP2's ``fully_shard`` replaced these parameters after the optimizer took them: the module
    then trains new (DTensor) parameters, and this optimizer would silently step nothing."""
    if any(_torch_compat.replaced_by_fully_shard(p) for p in params):
        raise RuntimeError(
            "WAME was built before fully_shard, which has since replaced the module's parameters with new "
            "sharded ones: this optimizer holds the old ones, which no longer train. Build the optimizer "
            "after sharding: fully_shard(...) first, then WAME(model.parameters(), ...)"
        )


def _is_initialisation_step(lr: float | Tensor, grads: list[Tensor]) -> bool:
    """A group's first step with ``lr`` 0 and all-zero gradients creates its state and changes nothing else.

    That is how ``torch.distributed.checkpoint.state_dict`` (``get/set_optimizer_state_dict``) makes an
    optimizer create its state before a checkpoint is loaded into it or taken from it. Algorithm 1 would
    move ``Z`` from 0 towards ``zeta`` (0.1 with ``alpha=0.9``) and count a step, and training would go on
    from that; with this rule the state is exactly that of a fresh optimizer."""
    return float(lr) == 0.0 and not any(bool(g.any()) for g in grads)


def with_variant_defaults(group: dict[str, Any]) -> dict[str, Any]:
    """``group`` with its unset (None) ``eps``, ``sign_source`` and ``betas`` set as its variant sets them,
    and its pairs as tuples (an unknown variant is left for :func:`validate_hyperparameters` to name)."""
    resolved = dict(group)
    for key, default in VARIANT_DEFAULTS.get(group["variant"], VARIANT_DEFAULTS["algorithm1"]).items():
        if resolved.get(key) is None:
            resolved[key] = default
    for pair in ("etas", "zeta_bounds", "betas"):
        if resolved[pair] is not None:
            resolved[pair] = tuple(resolved[pair])
    return resolved


def validate_hyperparameters(group: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming the argument, its value and the valid range for any invalid one."""

    def fail(name: str, value: Any, valid: str) -> None:
        raise ValueError(f"WAME: invalid {name}={value!r}; expected {valid}")

    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")  # torch's message
        lr = lr.item()
    if not lr >= 0.0:
        fail("lr", lr, "lr >= 0")
    if not 0.0 <= group["alpha"] < 1.0:
        fail("alpha", group["alpha"], "0 <= alpha < 1")
    etas = group["etas"]
    if len(etas) != 2 or not 0.0 < etas[0] < 1.0 < etas[1]:
        fail("etas", etas, "(eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus")
    bounds = group["zeta_bounds"]
    if len(bounds) != 2 or not 0.0 < bounds[0] <= 1.0 <= bounds[1] or math.isinf(bounds[1]):
        fail("zeta_bounds", bounds, "(zeta_min, zeta_max) with 0 < zeta_min <= 1 <= zeta_max < inf")
    if not group["eps"] >= 0.0:
        fail("eps", group["eps"], "eps >= 0")
    if not group["weight_decay"] >= 0.0:
        fail("weight_decay", group["weight_decay"], "weight_decay >= 0")
    if group["denominator"] not in DENOMINATORS:
        fail("denominator", group["denominator"], f"one of {DENOMINATORS}")
    variant = group["variant"]
    if variant not in VARIANTS:
        fail("variant", variant, f"one of {VARIANTS}")
    if group["sign_source"] not in SIGN_SOURCES:
        fail("sign_source", group["sign_source"], f"one of {SIGN_SOURCES}")
    if not group["decay"] >= 0.0:
        fail("decay", group["decay"], "decay >= 0")
    if variant == "algorithm1":
        for name, value, valid in (
            ("sign_source", group["sign_source"], "'gradient' (Algorithm 1 compares consecutive gradients)"),
            (
                "betas",
                group["betas"],
                "None (Algorithm 1 averages both with alpha; betas are the Keras variant's)",
            ),
            ("decay", group["decay"], "0 (the rate decay is the Keras variant's)"),
        ):
            if value != VARIANT_DEFAULTS["algorithm1"].get(name, 0.0):
                fail(name, value, f"{valid} with variant='algorithm1'")
    else:
        betas = group["betas"]
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            fail("betas", betas, "(beta_1, beta_2), each in [0, 1)")
        if group["denominator"] != "sqrt":
            fail("denominator", group["denominator"], "'sqrt' with variant='keras'")
    if group["state_dtype"] not in STATE_TYPES:
        fail("state_dtype", group["state_dtype"], f"one of {STATE_TYPES}")
    if group["state_dtype"] == EIGHT_BIT:
        if group["variant"] != "algorithm1":
            fail("state_dtype", EIGHT_BIT, "'fp32' or 'bf16' with variant='keras' (8-bit is Algorithm 1's)")
        try:
            eight_bit_state.exponent_bounds(group["etas"][1], *group["zeta_bounds"])
        except ValueError as error:
            raise ValueError(f"WAME: {error}") from None
    if group["fused"] and group["foreach"]:
        fail("fused", group["fused"], "fused=True together with foreach=False or None (choose one)")


def wame(
    params: list[Tensor],
    grads: list[Tensor],
    prev_signs: list[Tensor],
    zetas: list[Tensor],
    zs: list[Tensor],
    thetas: list[Tensor],
    steps: list[Tensor],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float | Tensor,
    alpha: float,
    eta_minus: float,
    eta_plus: float,
    zeta_min: float,
    zeta_max: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    denominator: str,
    maximize: bool,
    variant: str = "algorithm1",
    sign_source: str = "gradient",
    betas: tuple[float, float] | None = None,
    decay: float = 0.0,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    state_positions: list[list[Piece]] | None = None,
) -> None:
    """Functional WAME: updates ``params`` and the state lists in place. The one dispatch point.

    ``grad_scale`` and ``found_inf`` (0-dim float tensors, from ``torch.amp.GradScaler``): the gradients
    arrive multiplied by ``grad_scale``; a non-zero ``found_inf`` skips the step, its ``step`` count
    included. DTensors (FSDP2's sharded parameters and the state created like them) are updated through
    their local shards.

    The implementations take one rule with two switches: ``keras`` (the Keras variant's zeta, Z and step
    factor) and ``weight_sign`` (remember the weight's sign, not the gradient's), the mean square's decay
    ``theta_decay`` (``alpha``, or the Keras variant's ``beta_2``), the rate of decoupled weight decay
    ``lr`` and the step's rate ``step_size``: for the Keras variant both depend on the step count, so
    parameters are updated in one call per distinct count (all of them, unless some missed steps).

    Rows whose zeta, z and theta are of another dtype than the parameter (``state_dtype="bf16"``; their
    rounding is keyed by ``state_positions``, each row's pieces (length, row, offset), see
    :meth:`WAME.place`; default: one piece, the row's index in these lists, offset 0; a row in several
    pieces is updated as one row per piece, on views) go to the fused CPU kernel as they are where it
    takes them (:func:`wame_dist.optim.fused.takes_compact`), which rounds in registers; the others are
    updated on copies in the parameter's dtype, written back by
    :func:`wame_dist.optim.compact_state.round_state_`.
    """
    params, grads, prev_signs, zetas, zs, thetas = (
        _torch_compat.local_tensors(tensors) for tensors in (params, grads, prev_signs, zetas, zs, thetas)
    )
    implementation = choose_implementation(params, foreach=foreach, fused=fused)
    if found_inf is None:
        torch._foreach_add_(steps, 1)
    else:
        torch._foreach_add_(steps, [(1 - found_inf).to(step) for step in steps])
    lr = float(_torch_compat.to_scalar(lr))
    pieces = state_positions or [[(p.numel(), i, 0)] for i, p in enumerate(params)]
    rows, steps, places = _cut_into_pieces(
        list(zip(params, grads, prev_signs, zetas, zs, thetas)), steps, pieces
    )
    compact = {i: row[3:] for i, row in enumerate(rows) if row[3].dtype != row[0].dtype}
    in_kernel = {
        i: (int(steps[i]), *places[i])
        for i in compact
        if implementation is _fused_wame and _fused.takes_compact(rows[i])
    }
    for i in compact.keys() - in_kernel.keys():  # the rule runs on float copies in the parameter's dtype
        rows[i] = (*rows[i][:3], *(t.to(rows[i][0].dtype) for t in compact[i]))
    keras = variant == "keras"
    if keras:
        by_step: dict[float, list[int]] = {}
        for i, step in enumerate(steps):
            by_step.setdefault(float(step), []).append(i)
        batches = [(_keras_rates(lr, betas, decay, t), indices) for t, indices in by_step.items()]
    else:
        batches = [((lr, lr), list(range(len(rows))))]
    for (decayed_lr, step_size), indices in batches:
        keys = {"state_keys": [in_kernel.get(i) for i in indices]} if in_kernel else {}
        implementation(
            *(list(column) for column in zip(*(rows[i] for i in indices))),
            lr=decayed_lr,
            step_size=step_size,
            alpha=alpha,
            theta_decay=betas[1] if keras else alpha,
            eta_minus=eta_minus,
            eta_plus=eta_plus,
            zeta_min=zeta_min,
            zeta_max=zeta_max,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            literal=denominator == "literal",
            maximize=maximize,
            keras=keras,
            weight_sign=sign_source == "weight",
            grad_scale=grad_scale,
            found_inf=found_inf,
            **keys,
        )
    for i in compact.keys() - in_kernel.keys():
        compact_state.round_state_(list(compact[i]), list(rows[i][3:]), int(steps[i]), *places[i])


def _cut_into_pieces(
    rows: list[tuple[Tensor, ...]], steps: list[Tensor], pieces: list[list[Piece]]
) -> tuple[list[tuple[Tensor, ...]], list[Tensor], list[tuple[int, int]]]:
    """The rows with each compact one placed in several pieces replaced by one row per piece (flat views of
    its tensors, sharing its step counter), and every row's (row, offset) place."""
    out_rows, out_steps, places = [], [], []
    for row, step, placed in zip(rows, steps, pieces, strict=True):
        if len(placed) == 1 or row[3].dtype == row[0].dtype:
            out_rows.append(row)
            out_steps.append(step)
            places.append(placed[0][1:])
            continue
        start = 0
        for length, *place in placed:
            out_rows.append(tuple(t.view(-1).narrow(0, start, length) for t in row))
            out_steps.append(step)
            places.append(tuple(place))
            start += length
    return out_rows, out_steps, places


def _keras_rates(lr: float, betas: tuple[float, float], decay: float, t: float) -> tuple[float, float]:
    """The Keras variant's rates at step ``t`` (from 1): the decayed rate ``lr / (1 + decay * (t - 1))``
    and the step's rate, that times Adam's bias correction ``sqrt(1 - beta_2**t) / (1 - beta_1**t)``."""
    beta_1, beta_2 = betas
    decayed = lr / (1.0 + decay * (t - 1.0))
    return decayed, decayed * math.sqrt(1.0 - beta_2**t) / (1.0 - beta_1**t)


def choose_implementation(params: list[Tensor], *, foreach: bool | None, fused: bool | None):
    """Picks the implementation the way torch.optim does, preferring fused when both flags are None."""
    if fused:
        _fused.require(params)
        return _fused_wame
    if foreach is None and fused is None and _fused.available(params):
        return _fused_wame
    foreach_ok = all(p.device.type in _torch_compat.foreach_supported_devices() for p in params)
    if foreach or (foreach is None and foreach_ok):
        return _multi_tensor_wame
    return _single_tensor_wame


def _fused_wame(*tensor_lists: list[Tensor], **hyperparameters: Any) -> None:
    _fused.fused_wame(*tensor_lists, multi_tensor_fallback=_multi_tensor_wame, **hyperparameters)


def _single_tensor_wame(
    params: list[Tensor],
    grads: list[Tensor],
    prev_signs: list[Tensor],
    zetas: list[Tensor],
    zs: list[Tensor],
    thetas: list[Tensor],
    *,
    lr: float,
    step_size: float,
    alpha: float,
    theta_decay: float,
    eta_minus: float,
    eta_plus: float,
    zeta_min: float,
    zeta_max: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    literal: bool,
    maximize: bool,
    keras: bool,
    weight_sign: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    grads = _amp_unscaled(grads, grad_scale, found_inf)
    if grads is None:
        return
    for param, grad, prev_sign, zeta, z, theta in zip(params, grads, prev_signs, zetas, zs, thetas):
        weight_sign_before = torch.sign(param) if weight_sign else None
        grad = -grad if maximize else grad
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        sign = torch.sign(grad)  # -1, 0, +1; sign(NaN) = 0
        agreement = sign * prev_sign
        if keras:  # zeta moves unclipped; the clipped value is used, and divided by its average
            zeta.copy_(
                torch.where(
                    agreement > 0, zeta * eta_plus, torch.where(agreement < 0, zeta * eta_minus, zeta)
                )
            )
            clipped = zeta.clamp(zeta_min, zeta_max)
            z.lerp_(clipped, 1 - alpha)
            factor = clipped.div_(z)
        else:
            zeta.copy_(
                torch.where(
                    agreement > 0,
                    (zeta * eta_plus).clamp_(max=zeta_max),
                    torch.where(agreement < 0, (zeta * eta_minus).clamp_(min=zeta_min), zeta),
                )
            )
            z.lerp_(zeta, 1 - alpha)
            factor = z
        prev_sign.copy_(sign if weight_sign_before is None else weight_sign_before)
        theta.mul_(theta_decay).addcmul_(grad, grad, value=1 - theta_decay)
        guard = _representable_eps(eps, param.dtype)
        denom = theta.add(guard) if literal else theta.sqrt().add_(guard)
        param.addcdiv_(factor * grad, denom, value=-step_size)


def _multi_tensor_wame(
    params: list[Tensor],
    grads: list[Tensor],
    prev_signs: list[Tensor],
    zetas: list[Tensor],
    zs: list[Tensor],
    thetas: list[Tensor],
    *,
    lr: float,
    step_size: float,
    alpha: float,
    theta_decay: float,
    eta_minus: float,
    eta_plus: float,
    zeta_min: float,
    zeta_max: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    literal: bool,
    maximize: bool,
    keras: bool,
    weight_sign: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    grads = _amp_unscaled(grads, grad_scale, found_inf)
    if grads is None:
        return
    grouped = _torch_compat.group_by_device_and_dtype(params, grads, prev_signs, zetas, zs, thetas)
    for (device, dtype), tensor_lists in grouped.items():
        guard = _representable_eps(eps, dtype)
        beyond = torch.finfo(dtype).max / 4  # above any zeta, and zeta +- beyond stays finite
        slice_elements = _CPU_SLICE_ELEMENTS if device is not None and device.type == "cpu" else None
        for dev_params, dev_grads, dev_prev_signs, dev_zetas, dev_zs, dev_thetas in _slices(
            tensor_lists, slice_elements
        ):
            weight_signs = torch._foreach_sign(dev_params) if weight_sign else None
            if maximize:
                dev_grads = torch._foreach_neg(dev_grads)
            if weight_decay != 0:
                if decoupled_weight_decay:
                    torch._foreach_mul_(dev_params, 1 - lr * weight_decay)
                else:
                    dev_grads = torch._foreach_add(dev_grads, dev_params, alpha=weight_decay)

            # zeta's exact selection without a foreach `where`, with c = sign * prev_sign in {-1, 0, +1}:
            # pulled = zeta - beyond * c, up = max(min(zeta * eta_plus, zeta_max), pulled) and
            # down = min(max(zeta * eta_minus, zeta_min), pulled); then zeta + beyond * c clamped to
            # [down, up] gives min(zeta * eta_plus, zeta_max) where c > 0 (pulled < 0 < up),
            # max(zeta * eta_minus, zeta_min) where c < 0 (pulled > zeta_max), and zeta itself where c = 0
            # (down <= zeta <= up even for a zeta outside the current bounds: bounds changed mid-run, or
            # state loaded from a run with other bounds). The Keras variant's zeta is unbounded (0 to inf),
            # so its ``beyond`` is per element, min((eta_plus + 1) * zeta, the dtype's max): large enough to
            # select, finite where c = 0, and where zeta +- beyond overflows the selection still holds.
            signs = torch._foreach_sign(dev_grads)
            ups = torch._foreach_mul(dev_zetas, eta_plus)
            downs = torch._foreach_mul(dev_zetas, eta_minus)
            if keras:
                agreements = torch._foreach_mul(signs, dev_prev_signs)
                beyonds = torch._foreach_mul(dev_zetas, eta_plus + 1.0)
                torch._foreach_clamp_max_(beyonds, torch.finfo(dtype).max)
                pulled = torch._foreach_addcmul(dev_zetas, beyonds, agreements, value=-1.0)
            else:
                pulled = torch._foreach_addcmul(dev_zetas, signs, dev_prev_signs, value=-beyond)
                torch._foreach_clamp_max_(ups, zeta_max)
                torch._foreach_clamp_min_(downs, zeta_min)
            torch._foreach_maximum_(ups, pulled)
            torch._foreach_minimum_(downs, pulled)
            if keras:
                torch._foreach_addcmul_(dev_zetas, beyonds, agreements)
            else:
                torch._foreach_addcmul_(dev_zetas, signs, dev_prev_signs, value=beyond)
            torch._foreach_copy_(dev_prev_signs, signs if weight_signs is None else weight_signs)
            torch._foreach_minimum_(dev_zetas, ups)
            torch._foreach_maximum_(dev_zetas, downs)

            if keras:
                factors = torch._foreach_clamp_min(dev_zetas, zeta_min)
                torch._foreach_clamp_max_(factors, zeta_max)
                torch._foreach_lerp_(dev_zs, factors, 1 - alpha)
                torch._foreach_div_(factors, dev_zs)
            else:
                torch._foreach_lerp_(dev_zs, dev_zetas, 1 - alpha)
                factors = dev_zs
            torch._foreach_mul_(dev_thetas, theta_decay)
            torch._foreach_addcmul_(dev_thetas, dev_grads, dev_grads, 1 - theta_decay)
            if literal:
                denoms = torch._foreach_add(dev_thetas, guard)
            else:
                denoms = torch._foreach_sqrt(dev_thetas)
                torch._foreach_add_(denoms, guard)
            steps = torch._foreach_mul(factors, dev_grads)
            torch._foreach_addcdiv_(dev_params, steps, denoms, -step_size)


def _amp_unscaled(
    grads: list[Tensor], grad_scale: Tensor | None, found_inf: Tensor | None
) -> list[Tensor] | None:
    """torch.amp's protocol for the implementations without a kernel (rows the fused kernel cannot take, or
    a group with other flags than the defaults): None when ``found_inf`` says to skip the step, else the
    gradients times ``1 / grad_scale``, rounded to float32 as ``GradScaler.unscale_`` rounds it."""
    if found_inf is not None and found_inf.item() != 0:
        return None
    if grad_scale is None:
        return grads
    return torch._foreach_mul(grads, grad_scale.double().reciprocal().float().item())


def _representable_eps(eps: float, dtype: torch.dtype) -> float:
    """``eps``, or float16's smallest subnormal (2**-24) if ``eps`` would round to 0 in float16 and turn the
    first step of a weight whose gradients were all 0 into 0/0. (The fused kernels compute in float.)"""
    return max(eps, 2.0**-24) if dtype == torch.float16 and eps > 0 else eps


def _slices(tensor_lists: list[list[Tensor]], max_elements: int | None) -> Iterator[list[list[Tensor]]]:
    """Yields the parallel lists whole (``max_elements=None``), or cut into batches of flat slices of at
    most ``max_elements`` elements each, so that a batch stays in cache across all ops of one step."""
    if max_elements is None:
        yield tensor_lists
        return
    batch: list[list[Tensor]] = [[] for _ in tensor_lists]
    filled = 0
    for row in zip(*tensor_lists):
        if not all(t.is_contiguous() for t in row):
            yield [[t] for t in row]
            continue
        flat = [t.view(-1) for t in row]
        for start in range(0, flat[0].numel(), max_elements):
            pieces = [f[start : start + max_elements] for f in flat]
            for column, piece in zip(batch, pieces):
                column.append(piece)
            filled += pieces[0].numel()
            if filled >= max_elements:
                yield batch
                batch, filled = [[] for _ in tensor_lists], 0
    if filled:
        yield batch


#: The constructor's keyword-only flags and their defaults, which a loaded group lacking them takes.
_FLAG_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(WAME.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}
