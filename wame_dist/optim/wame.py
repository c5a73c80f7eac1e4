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

from wame_dist.optim import _torch_compat
from wame_dist.optim import fused as _fused

__all__ = ["WAME", "wame"]

DENOMINATORS = ("sqrt", "literal")

#: Per-parameter state: key -> how to create it lazily from the parameter (ZeRO partitions and checkpoints
#: converted by other tools may arrive with some keys missing; each is then created on its own).
_STATE_FACTORIES = {
    "step": lambda p: _step_counter(0.0),
    "prev_sign": lambda p: torch.zeros_like(p, dtype=torch.int8, memory_format=torch.preserve_format),
    "zeta": lambda p: torch.ones_like(p, memory_format=torch.preserve_format),
    "z": lambda p: torch.zeros_like(p, memory_format=torch.preserve_format),
    "theta": lambda p: torch.zeros_like(p, memory_format=torch.preserve_format),
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

    ``denominator="sqrt"`` (default) divides by the root of the mean square, as RMSprop does and as the
    paper's section 2.2 reads its divisor; ``"literal"`` is line 11 of Algorithm 1 word for word (its step
    scales like ``1/|g|`` and needs a far smaller ``lr``). ``Z`` multiplies the step, as in Algorithm 1
    (the paper's prose says "divide"). Every operation is element-wise, so a ZeRO partition of a flattened
    parameter gets exactly the update of the whole tensor.

    State per parameter: ``step`` (0-dim float tensor, bookkeeping only: WAME has no bias correction),
    ``prev_sign`` (int8: only the sign of the previous gradient is ever read), ``zeta``, ``z``, ``theta``
    (the parameter's dtype): 13 bytes per fp32 weight. Complex parameters are treated as pairs of
    independent reals (their state has the shape of ``torch.view_as_real(param)``).

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
        weight_decay: :math:`\omega` >= 0, an L2 term added to the gradient, or with
            ``decoupled_weight_decay=True`` a factor ``1 - lr * weight_decay`` applied to the weight first.
        denominator: ``"sqrt"`` or ``"literal"``, see above.
        maximize: ascend the objective instead of descending it.
        foreach: use the multi-tensor implementation.
        fused: use the fused kernel (C++/OpenMP on CPU, Triton on CUDA). With both ``None`` the fastest
            available implementation is picked: fused, else multi-tensor, else single-tensor.

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
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        denominator: str = "sqrt",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "etas": tuple(etas),
            "zeta_bounds": tuple(zeta_bounds),
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "denominator": denominator,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
        }
        validate_hyperparameters(defaults)
        super().__init__(params, defaults)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """True for ``fused=True``, as for torch's fused optimizers: ``torch.amp.GradScaler.step`` then sets
        ``grad_scale`` and ``found_inf`` on the optimizer instead of unscaling the gradients itself."""
        return bool(self.defaults["fused"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a pickled optimizer, or the state ``load_state_dict`` built, as torch's optimizers do:
        implementation flags missing from a group (a state_dict of an older version or of another writer)
        take the constructor's defaults, and a ``step`` saved as a Python number becomes a tensor."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in _FLAG_DEFAULTS.items():
                group.setdefault(key, default)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = _step_counter(float(p_state["step"]))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group like ``torch.optim.Optimizer`` does, then validates its hyperparameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["etas"], group["zeta_bounds"] = tuple(group["etas"]), tuple(group["zeta_bounds"])
        validate_hyperparameters(group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads state like ``torch.optim.Optimizer`` does, keeping ``prev_sign`` int8.

        (The base class casts every floating state to the parameter's dtype; ``prev_sign`` holds only
        -1, 0 and +1, so casting it back is exact.)
        """
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "prev_sign" in state and state["prev_sign"].dtype != torch.int8:
                state["prev_sign"] = state["prev_sign"].to(torch.int8)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """Collects the group's parameters that have gradients, with their gradients and state."""
        params, grads, prev_signs, zetas, zs, thetas, steps = [], [], [], [], [], [], []
        for p in group["params"]:
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
            state = self._state_of(p, param)
            params.append(param)
            grads.append(grad)
            prev_signs.append(state["prev_sign"])
            zetas.append(state["zeta"])
            zs.append(state["z"])
            thetas.append(state["theta"])
            steps.append(state["step"])
        return params, grads, prev_signs, zetas, zs, thetas, steps

    def _state_of(self, p: Tensor, param: Tensor) -> dict[str, Tensor]:
        """The state of ``p`` (``param``: its real view), each missing key created at its initial value, and
        a ``prev_sign`` widened by a foreign checkpoint loader narrowed back to int8 (exactly)."""
        state = self.state[p]
        for key, factory in _STATE_FACTORIES.items():
            if key not in state:
                state[key] = factory(param)
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
                self._state_of(p, torch.view_as_real(p) if p.is_complex() else p)

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
            tensors = self._init_group(group)
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
                decoupled_weight_decay=group["decoupled_weight_decay"],
                denominator=group["denominator"],
                maximize=group["maximize"],
                grad_scale=grad_scale,
                found_inf=found_inf,
            )
        return loss


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
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Functional WAME: updates ``params`` and the state lists in place. The one dispatch point.

    ``grad_scale`` and ``found_inf`` (0-dim float tensors, from ``torch.amp.GradScaler``): the gradients
    arrive multiplied by ``grad_scale``; a non-zero ``found_inf`` skips the step, its ``step`` count
    included. DTensors (FSDP2's sharded parameters and the state created like them) are updated through
    their local shards.
    """
    params, grads, prev_signs, zetas, zs, thetas = (
        _torch_compat.local_tensors(tensors) for tensors in (params, grads, prev_signs, zetas, zs, thetas)
    )
    implementation = choose_implementation(params, foreach=foreach, fused=fused)
    if found_inf is None:
        torch._foreach_add_(steps, 1)
    else:
        torch._foreach_add_(steps, [(1 - found_inf).to(step) for step in steps])
    implementation(
        params,
        grads,
        prev_signs,
        zetas,
        zs,
        thetas,
        lr=float(_torch_compat.to_scalar(lr)),
        alpha=alpha,
        eta_minus=eta_minus,
        eta_plus=eta_plus,
        zeta_min=zeta_min,
        zeta_max=zeta_max,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        literal=denominator == "literal",
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )


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
    alpha: float,
    eta_minus: float,
    eta_plus: float,
    zeta_min: float,
    zeta_max: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    literal: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    grads = _amp_unscaled(grads, grad_scale, found_inf)
    if grads is None:
        return
    for param, grad, prev_sign, zeta, z, theta in zip(params, grads, prev_signs, zetas, zs, thetas):
        grad = -grad if maximize else grad
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        sign = torch.sign(grad)  # -1, 0, +1; sign(NaN) = 0
        agreement = sign * prev_sign
        zeta.copy_(
            torch.where(
                agreement > 0,
                (zeta * eta_plus).clamp_(max=zeta_max),
                torch.where(agreement < 0, (zeta * eta_minus).clamp_(min=zeta_min), zeta),
            )
        )
        prev_sign.copy_(sign)
        z.lerp_(zeta, 1 - alpha)
        theta.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        guard = _representable_eps(eps, param.dtype)
        denom = theta.add(guard) if literal else theta.sqrt().add_(guard)
        param.addcdiv_(z * grad, denom, value=-lr)


def _multi_tensor_wame(
    params: list[Tensor],
    grads: list[Tensor],
    prev_signs: list[Tensor],
    zetas: list[Tensor],
    zs: list[Tensor],
    thetas: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eta_minus: float,
    eta_plus: float,
    zeta_min: float,
    zeta_max: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    literal: bool,
    maximize: bool,
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
            # state loaded from a run with other bounds).
            signs = torch._foreach_sign(dev_grads)
            pulled = torch._foreach_addcmul(dev_zetas, signs, dev_prev_signs, value=-beyond)
            ups = torch._foreach_mul(dev_zetas, eta_plus)
            torch._foreach_clamp_max_(ups, zeta_max)
            torch._foreach_maximum_(ups, pulled)
            downs = torch._foreach_mul(dev_zetas, eta_minus)
            torch._foreach_clamp_min_(downs, zeta_min)
            torch._foreach_minimum_(downs, pulled)
            torch._foreach_addcmul_(dev_zetas, signs, dev_prev_signs, value=beyond)
            torch._foreach_copy_(dev_prev_signs, signs)
            torch._foreach_minimum_(dev_zetas, ups)
            torch._foreach_maximum_(dev_zetas, downs)

            torch._foreach_lerp_(dev_zs, dev_zetas, 1 - alpha)
            torch._foreach_mul_(dev_thetas, alpha)
            torch._foreach_addcmul_(dev_thetas, dev_grads, dev_grads, 1 - alpha)
            if literal:
                denoms = torch._foreach_add(dev_thetas, guard)
            else:
                denoms = torch._foreach_sqrt(dev_thetas)
                torch._foreach_add_(denoms, guard)
            steps = torch._foreach_mul(dev_zs, dev_grads)
            torch._foreach_addcdiv_(dev_params, steps, denoms, -lr)


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
