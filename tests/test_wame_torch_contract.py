"""WAME keeps torch.optim's contract where torch's own optimizers (Adam) define it: state_dicts of other
writers, load_state_dict hooks, tensor lr, torch.amp.GradScaler with a fused optimizer, copies."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from conftest import IMPLEMENTATIONS

from wame_dist import WAME

#: WAME and the torch optimizer whose behaviour it matches, each built the same way.
OPTIMIZERS = {"WAME": WAME, "Adam": torch.optim.Adam}
FLAGS = ("foreach", "fused", "maximize", "differentiable", "decoupled_weight_decay", "denominator")


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def train(net: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        generator = torch.Generator().manual_seed(t)
        x, y = torch.randn(16, 5, generator=generator), torch.randn(16, 2, generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()


def trained(name: str, steps: int = 3, **kwargs) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    net = model()
    optimizer = OPTIMIZERS[name](net.parameters(), lr=1e-2, **kwargs)
    train(net, optimizer, range(steps))
    return net, optimizer


def assert_same_run(net_a, opt_a, net_b, opt_b) -> None:
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)
        for key, value in opt_a.state[pa].items():
            assert torch.equal(value, opt_b.state[pb][key]), key


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_state_dict_without_implementation_flags_loads_with_the_defaults(name):
    """An older version or another writer: no implementation flags in the groups. Adam takes its defaults
    in ``__setstate__``; so does WAME, and the run goes on exactly as an uninterrupted one."""
    net, optimizer = trained(name)
    saved = copy.deepcopy(optimizer.state_dict())  # loading would share the tensors
    for group in saved["param_groups"]:
        for flag in FLAGS:
            group.pop(flag, None)
    resumed_net = copy.deepcopy(net)
    resumed = OPTIMIZERS[name](resumed_net.parameters(), lr=1e-2)
    resumed.load_state_dict(saved)
    if name == "WAME":
        defaults = {"foreach": None, "fused": None, "maximize": False, "decoupled_weight_decay": False}
        assert {k: resumed.param_groups[0][k] for k in defaults} == defaults
        assert resumed.param_groups[0]["denominator"] == "sqrt"
    train(net, optimizer, range(3, 6))
    train(resumed_net, resumed, range(3, 6))
    assert_same_run(net, optimizer, resumed_net, resumed)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_state_dict_with_python_number_steps_loads(name):
    """``step`` saved as a Python number (older torch, other writers) becomes a tensor, as in Adam."""
    net, optimizer = trained(name)
    saved = copy.deepcopy(optimizer.state_dict())  # loading would share the tensors
    for state in saved["state"].values():
        state["step"] = float(state["step"])
    resumed_net = copy.deepcopy(net)
    resumed = OPTIMIZERS[name](resumed_net.parameters(), lr=1e-2)
    resumed.load_state_dict(saved)
    train(net, optimizer, range(3, 6))
    train(resumed_net, resumed, range(3, 6))
    assert_same_run(net, optimizer, resumed_net, resumed)
    assert all(torch.is_tensor(s["step"]) and s["step"].item() == 6 for s in resumed.state.values())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_load_state_dict_hooks_fire_in_order_and_may_rewrite_the_dict(name):
    """Two pre-hooks (the second prepended, so it fires first; the other returns a rewritten dict) and two
    post-hooks: the same calls in the same order for WAME as for Adam, and the rewrite is what loads."""
    _, optimizer = trained(name)
    calls = []

    def rewrite(opt, state_dict):
        calls.append("pre: rewrite")
        rewritten = copy.deepcopy(state_dict)
        rewritten["param_groups"][0]["lr"] = 0.125
        return rewritten

    target = OPTIMIZERS[name](model(1).parameters(), lr=1e-2)
    target.register_load_state_dict_pre_hook(rewrite)
    target.register_load_state_dict_pre_hook(lambda opt, sd: calls.append("pre: first"), prepend=True)
    target.register_load_state_dict_post_hook(
        lambda opt: calls.append(f"post: lr={opt.param_groups[0]['lr']}")
    )
    target.register_load_state_dict_post_hook(lambda opt: calls.append("post: first"), prepend=True)
    target.load_state_dict(optimizer.state_dict())
    assert calls == ["pre: first", "pre: rewrite", "post: first", "post: lr=0.125"]
    assert optimizer.param_groups[0]["lr"] == 1e-2  # the caller's dict is not touched


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_multi_element_tensor_lr_raises_torchs_message(name):
    with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element$"):
        OPTIMIZERS[name](model().parameters(), lr=torch.tensor([1e-3, 1e-3]))


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_deepcopy_pickle_and_weights_only_load_keep_working(implementation):
    net, optimizer = trained("WAME", **IMPLEMENTATIONS[implementation])
    copied_net, copied = copy.deepcopy((net, optimizer))
    pickled_net, pickled = pickle.loads(pickle.dumps((net, optimizer)))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded_net = copy.deepcopy(net)
    loaded = WAME(loaded_net.parameters(), lr=1e-2)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert pickled._step_supports_amp_scaling == (implementation == "fused")
    train(net, optimizer, range(3, 6))
    for other_net, other in ((copied_net, copied), (pickled_net, pickled), (loaded_net, loaded)):
        train(other_net, other, range(3, 6))
        assert_same_run(net, optimizer, other_net, other)


def test_only_the_fused_implementation_takes_over_amp_scaling():
    """As with torch's Adam: GradScaler hands grad_scale/found_inf only to fused optimizers."""
    for flags, fused in ((IMPLEMENTATIONS["fused"], True), (IMPLEMENTATIONS["foreach"], False), ({}, False)):
        assert WAME(model().parameters(), **flags)._step_supports_amp_scaling is fused
        assert (
            getattr(torch.optim.Adam(model().parameters(), **flags), "_step_supports_amp_scaling", False)
            is fused
        )


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_a_step_with_found_inf_changes_nothing(implementation):
    """``found_inf`` set (by GradScaler, for the fused implementation): no parameter, state or step moves;
    with it clear, ``grad_scale`` is divided out of the gradients."""
    net, optimizer = trained("WAME", **IMPLEMENTATIONS[implementation])
    before = copy.deepcopy((list(net.parameters()), optimizer.state_dict()))
    scale = torch.tensor(256.0)
    for p in net.parameters():
        p.grad = torch.randn_like(p) * scale
    optimizer.grad_scale, optimizer.found_inf = scale, torch.tensor(1.0)
    optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before[0]))
    state_before = before[1]["state"]
    for i, p in enumerate(net.parameters()):
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, state_before[i][key].to(value)), key

    unscaled_net, unscaled = copy.deepcopy((net, optimizer))  # (attributes set on it are not copied)
    for p, scaled in zip(unscaled_net.parameters(), net.parameters()):
        p.grad = scaled.grad / scale
    optimizer.found_inf = torch.tensor(0.0)
    optimizer.step()
    unscaled.step()
    assert_same_run(net, optimizer, unscaled_net, unscaled)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grad_scaler_loop_matches_the_unfused_run(dtype):
    """A real torch.amp loop on CPU (autocast forward, GradScaler): fused WAME gets grad_scale/found_inf and
    unscales inside its kernel; unfused WAME gets gradients GradScaler unscaled. One step overflows (an inf
    gradient): both skip it, and both runs end within float rounding of each other."""
    runs = {}
    for name, flags in (("fused", IMPLEMENTATIONS["fused"]), ("single", IMPLEMENTATIONS["single"])):
        net = model()
        optimizer = WAME(net.parameters(), lr=1e-2, **flags)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        scales = []
        for t in range(8):
            generator = torch.Generator().manual_seed(t)
            x, y = torch.randn(16, 5, generator=generator), torch.randn(16, 2, generator=generator)
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = torch.nn.functional.mse_loss(net(x).float(), y)
            scaler.scale(loss).backward()
            if t == 3:
                net[0].weight.grad[0, 0] = torch.inf
            scaler.step(optimizer)
            scaler.update()
            scales.append(scaler.get_scale())
        runs[name] = (net, optimizer, scales)
    (fused_net, fused_opt, fused_scales), (single_net, single_opt, single_scales) = (
        runs["fused"],
        runs["single"],
    )
    assert fused_scales == single_scales and fused_scales[3] == fused_scales[2] / 2  # the overflow backed off
    for pf, ps in zip(fused_net.parameters(), single_net.parameters()):
        torch.testing.assert_close(pf, ps, rtol=1e-5, atol=1e-6)
        sf, ss = fused_opt.state[pf], single_opt.state[ps]
        assert sf["step"].item() == ss["step"].item() == 7  # 8 steps, one skipped
        assert torch.equal(sf["prev_sign"], ss["prev_sign"])
        for key in ("zeta", "z", "theta"):
            torch.testing.assert_close(sf[key], ss[key], rtol=1e-5, atol=1e-7)
