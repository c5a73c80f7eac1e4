"""WAME behaves as torch.optim users expect: groups, state_dict, closures, hooks, dtypes, bad input."""

from __future__ import annotations

import copy
import doctest
import io
import re

import pytest
import torch
from conftest import IMPLEMENTATIONS

import wame_dist.optim.wame as wame_module
from wame_dist import WAME


def small_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(16, 5, generator=generator).to(dtype), torch.randn(16, 2, generator=generator).to(
        dtype
    )


def train(model, optimizer, steps: range) -> None:
    for t in steps:
        x, y = batch(t, next(model.parameters()).dtype)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_docstring_example_runs():
    assert doctest.testmod(wame_module, raise_on_error=True).attempted > 0


def test_state_is_compact_and_typed():
    model = small_model()
    optimizer = WAME(model.parameters())
    train(model, optimizer, range(2))
    for p in model.parameters():
        state = optimizer.state[p]
        assert set(state) == {"step", "prev_sign", "zeta", "z", "theta"}
        assert state["prev_sign"].dtype == torch.int8 and state["step"].dim() == 0
        per_weight = sum(t.numel() * t.element_size() for t in state.values() if t.dim() > 0) / p.numel()
        assert per_weight == 13  # 3 fp32 + 1 int8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_state_in_param_dtype(dtype, implementation):
    model = small_model(dtype=dtype)
    optimizer = WAME(model.parameters(), **implementation)
    train(model, optimizer, range(3))
    for p in model.parameters():
        assert all(optimizer.state[p][k].dtype == dtype for k in ("zeta", "z", "theta"))
        assert optimizer.state[p]["prev_sign"].dtype == torch.int8
        assert torch.isfinite(p).all()


def test_param_groups_have_their_own_hyperparameters():
    model = small_model()
    frozen, trained = model[0], model[2]
    optimizer = WAME([{"params": frozen.parameters(), "lr": 0.0}, {"params": trained.parameters()}], lr=1e-2)
    before = copy.deepcopy(model.state_dict())
    train(model, optimizer, range(3))
    assert torch.equal(frozen.weight, before["0.weight"])
    assert not torch.equal(trained.weight, before["2.weight"])
    assert optimizer.param_groups[1]["etas"] == (0.1, 1.2)


def test_add_param_group_validates_and_updates():
    model = small_model()
    optimizer = WAME(model[0].parameters())
    with pytest.raises(ValueError, match=r"alpha=1\.5"):
        optimizer.add_param_group({"params": model[2].parameters(), "alpha": 1.5})
    optimizer.param_groups.pop()  # the base class appends before our check raised
    optimizer.add_param_group({"params": model[2].parameters(), "etas": [0.5, 1.5]})
    before = model[2].weight.detach().clone()
    train(model, optimizer, range(2))
    assert not torch.equal(model[2].weight, before)
    assert optimizer.param_groups[1]["etas"] == (0.5, 1.5)


def test_params_without_grad_are_untouched():
    model = small_model()
    optimizer = WAME(model.parameters(), lr=1e-2)
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    train(model, optimizer, range(2))
    assert torch.equal(model[0].weight, before) and model[0].weight not in optimizer.state


def test_zero_grad_closure_and_hooks():
    model = small_model()
    optimizer = WAME(model.parameters())
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))

    def closure():
        optimizer.zero_grad()
        x, y = batch(0)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and calls == ["pre", "post"]
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_tensor_lr_equals_float_lr(implementation):
    a, b = small_model(), small_model()
    train(a, WAME(a.parameters(), lr=torch.tensor(3e-3), **implementation), range(5))
    train(b, WAME(b.parameters(), lr=3e-3, **implementation), range(5))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_complex_params_are_pairs_of_reals(implementation):
    torch.manual_seed(0)
    start = torch.randn(6, dtype=torch.complex64)
    as_complex = torch.nn.Parameter(start.clone())
    as_real = torch.nn.Parameter(torch.view_as_real(start).clone())
    opt_complex = WAME([as_complex], lr=1e-2, **implementation)
    opt_real = WAME([as_real], lr=1e-2, **implementation)
    for t in range(4):
        grad = torch.randn(6, dtype=torch.complex64, generator=torch.Generator().manual_seed(t))
        as_complex.grad, as_real.grad = grad, torch.view_as_real(grad).clone()
        opt_complex.step()
        opt_real.step()
    assert torch.equal(torch.view_as_real(as_complex.detach()), as_real.detach())
    assert opt_complex.state[as_complex]["prev_sign"].shape == (6, 2)


def test_sparse_gradients_are_refused():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        WAME(embedding.parameters()).step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1e-3}, "lr=-0.001; expected lr >= 0"),
        ({"lr": torch.tensor([1e-3, 2e-3])}, "Tensor lr must be 1-element"),
        ({"alpha": 1.0}, "alpha=1.0; expected 0 <= alpha < 1"),
        ({"alpha": -0.1}, "alpha=-0.1"),
        (
            {"etas": (1.1, 1.2)},
            "etas=(1.1, 1.2); expected (eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus",
        ),
        ({"etas": (0.1, 0.9)}, "etas=(0.1, 0.9)"),
        ({"etas": (0.0, 1.2)}, "etas=(0.0, 1.2)"),
        (
            {"zeta_bounds": (0.0, 100.0)},
            "zeta_bounds=(0.0, 100.0); expected (zeta_min, zeta_max) with 0 < zeta_min",
        ),
        ({"zeta_bounds": (1.5, 100.0)}, "zeta_bounds=(1.5, 100.0)"),
        ({"zeta_bounds": (0.01, 0.5)}, "zeta_bounds=(0.01, 0.5)"),
        ({"eps": -1.0}, "eps=-1.0; expected eps >= 0"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1; expected weight_decay >= 0"),
        ({"denominator": "theta"}, "denominator='theta'; expected one of ('sqrt', 'literal')"),
        ({"fused": True, "foreach": True}, "fused=True together with foreach"),
    ],
)
def test_invalid_hyperparameters_name_argument_value_and_range(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        WAME(small_model().parameters(), **kwargs)


def use(optimizer: WAME, implementation: str) -> None:
    """Switches every group of ``optimizer`` to one of the IMPLEMENTATIONS."""
    for group in optimizer.param_groups:
        group.update({"foreach": None, "fused": None, **IMPLEMENTATIONS[implementation]})


@pytest.mark.parametrize("source", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("target", list(IMPLEMENTATIONS))
def test_state_dict_resume_is_identical(source, target):
    """Stop after 6 steps of ``source``, save, reload into a fresh model and optimizer, switch to ``target``,
    continue: bitwise the uninterrupted run, one optimizer that never leaves memory and switches from
    ``source`` to ``target`` after step 6. (``load_state_dict`` restores the saved groups' flags, as in
    torch, so the implementation is chosen after loading.)"""
    uninterrupted = small_model()
    optimizer = WAME(uninterrupted.parameters(), lr=3e-3, **IMPLEMENTATIONS[source])
    train(uninterrupted, optimizer, range(6))
    buffer = io.BytesIO()
    torch.save({"model": uninterrupted.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    use(optimizer, target)
    train(uninterrupted, optimizer, range(6, 12))

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = small_model(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = WAME(resumed.parameters(), lr=3e-3, **IMPLEMENTATIONS[target])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    use(resumed_optimizer, target)
    for p in resumed.parameters():
        assert resumed_optimizer.state[p]["prev_sign"].dtype == torch.int8
    train(resumed, resumed_optimizer, range(6, 12))

    for pc, pr in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(pc, pr)
        for key in ("prev_sign", "zeta", "z", "theta", "step"):
            assert torch.equal(optimizer.state[pc][key], resumed_optimizer.state[pr][key])


def test_state_dict_switching_implementation_keeps_the_trajectory():
    """A run that switches single -> foreach mid-way is bitwise the uninterrupted single run; switching to
    fused stays within float32 rounding of it."""
    reference = small_model()
    train(reference, WAME(reference.parameters(), lr=3e-3, foreach=False, fused=False), range(12))
    for target, tolerance in (("foreach", 0.0), ("fused", 1e-6)):
        model = small_model()
        optimizer = WAME(model.parameters(), lr=3e-3, foreach=False, fused=False)
        train(model, optimizer, range(6))
        switched = WAME(model.parameters(), lr=3e-3, **IMPLEMENTATIONS[target])
        switched.load_state_dict(optimizer.state_dict())
        use(switched, target)
        train(model, switched, range(6, 12))
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=tolerance, atol=tolerance)


def test_missing_state_keys_are_created_lazily():
    """ZeRO partitions and converted checkpoints may lack a key (e.g. an int8 prev_sign dropped by a
    converter); it is recreated at its initial value and the others are kept."""
    model = small_model()
    optimizer = WAME(model.parameters())
    train(model, optimizer, range(2))
    for state in optimizer.state.values():
        del state["prev_sign"]
    zeta_before = optimizer.state[model[0].weight]["zeta"].clone()
    x, y = batch(5)
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    state = optimizer.state[model[0].weight]
    assert torch.equal(state["zeta"], zeta_before)  # no previous sign: no agreement, zeta kept
    assert state["prev_sign"].dtype == torch.int8 and state["step"].item() == 3
