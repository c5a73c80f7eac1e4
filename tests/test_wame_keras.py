"""WAME(variant="keras") follows the authors' published Keras code: trajectories of every implementation
against an independent float64 transcription of that code (tests/reference_wame.py, which records what was
read), its quirks kept on purpose, and the arguments that belong to one variant refused with the other."""

from __future__ import annotations

import copy

import pytest
import torch
from reference_wame import ReferenceKerasWAME
from test_wame_algorithm import ATOL, RTOL, float64, quadratic_gradients

from wame_dist import WAME

CASES = {
    "published": {},
    "gradient_sign": {"sign_source": "gradient"},
    "decay": {"decay": 0.05, "lr": 1e-2},
    "maximize": {"maximize": True},
    "custom": {
        "alpha": 0.5,
        "betas": (0.8, 0.99),
        "etas": (0.5, 1.5),
        "zeta_bounds": (0.1, 4.0),
        "eps": 1e-6,
    },
}


def reference_for(weights: list[float], options: dict) -> ReferenceKerasWAME:
    eta_minus, eta_plus = options.get("etas", (0.1, 1.2))
    eta_min, eta_max = options.get("zeta_bounds", (0.01, 100.0))
    beta_1, beta_2 = options.get("betas", (0.9, 0.999))
    return ReferenceKerasWAME(
        list(weights),
        lr=options.get("lr", 1e-3),
        beta_1=beta_1,
        beta_2=beta_2,
        beta_a=options.get("alpha", 0.9),
        eta_minus=eta_minus,
        eta_plus=eta_plus,
        eta_min=eta_min,
        eta_max=eta_max,
        epsilon=options.get("eps", 1e-11),
        decay=options.get("decay", 0.0),
        sign_source=options.get("sign_source", "weight"),
        maximize=options.get("maximize", False),
    )


def sign(values: list[float]) -> list[int]:
    return [(v > 0) - (v < 0) for v in values]


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_the_published_code(case, implementation):
    """60 steps on a noisy quadratic whose optimum is near 0, so weights change sign and the weight-sign
    test differs from the gradient-sign one. The stored zeta leaves the bounds (it is not clipped)."""
    options = CASES[case]
    n, steps = 64, 60
    curvature, centre, noise = quadratic_gradients(n, steps, seed=3)
    centre = [0.1 * c for c in centre]
    start = 0.2 * torch.randn(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    param = torch.nn.Parameter(start.clone())
    optimizer = WAME([param], variant="keras", **options, **implementation)
    reference = reference_for(start.tolist(), options)
    direction = -1.0 if options.get("maximize") else 1.0
    zeta_min, zeta_max = options.get("zeta_bounds", (0.01, 100.0))
    left_bounds = False
    for t in range(steps):
        grads = [
            direction * (a * (w - c) + e)
            for a, w, c, e in zip(curvature, reference.weights, centre, noise[t])
        ]
        param.grad = torch.tensor(grads, dtype=torch.float64)
        optimizer.step()
        reference.step(grads)
        state = optimizer.state[param]
        torch.testing.assert_close(param.detach(), float64(reference.weights), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(state["zeta"], float64(reference.a), rtol=RTOL, atol=0)
        torch.testing.assert_close(state["z"], float64(reference.am), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(state["theta"], float64(reference.v), rtol=RTOL, atol=ATOL)
        assert state["prev_sign"].tolist() == sign(reference.prev)
        left_bounds |= min(reference.a) < zeta_min or max(reference.a) > zeta_max
    assert left_bounds, "the run must take the stored zeta outside its bounds"
    if options.get("sign_source", "weight") == "weight":
        flips = sum(x * y < 0 for x, y in zip(start.tolist(), reference.weights))
        assert flips > 0, "some weights must change sign"


def test_state_starts_with_z_one_and_fresh_optimizer_matches_published_initial_slots():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = WAME([param], variant="keras")
    optimizer.init_state()
    state = optimizer.state[param]
    assert state["z"].tolist() == [1.0, 1.0, 1.0] and state["zeta"].tolist() == [1.0, 1.0, 1.0]
    assert state["theta"].tolist() == [0.0] * 3 and state["prev_sign"].tolist() == [0] * 3
    group = optimizer.param_groups[0]
    assert (group["eps"], group["sign_source"], group["betas"]) == (1e-11, "weight", (0.9, 0.999))
    assert WAME([param]).param_groups[0]["eps"] == 1e-8  # Algorithm 1 keeps its own default


def test_stored_zeta_underflows_to_zero_and_stays_there(implementation):
    """A published quirk kept on purpose: with alternating gradient signs the unclipped zeta shrinks by 0.1
    per step, reaches float32's 0 after ~46 steps and, 0 times anything being 0, never grows again; the
    clipped value (0.01) still moves the weight."""
    param = torch.nn.Parameter(torch.full((4,), 0.5))
    optimizer = WAME([param], variant="keras", sign_source="gradient", **implementation)
    for t in range(60):
        param.grad = torch.full((4,), 1.0 if t % 2 else -1.0)
        optimizer.step()
    assert optimizer.state[param]["zeta"].tolist() == [0.0] * 4
    before = param.detach().clone()
    for _ in range(3):  # agreeing signs now: zeta stays 0
        param.grad = torch.ones(4)
        optimizer.step()
    assert optimizer.state[param]["zeta"].tolist() == [0.0] * 4
    assert (param.detach() < before).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"betas": (0.9, 0.999)}, "betas=(0.9, 0.999); expected None (Algorithm 1 averages"),
        ({"decay": 0.1}, "decay=0.1; expected 0 (the rate decay is the Keras variant's)"),
        ({"sign_source": "weight"}, "sign_source='weight'; expected 'gradient'"),
        ({"variant": "adam"}, "variant='adam'; expected one of ('algorithm1', 'keras')"),
        ({"variant": "keras", "denominator": "literal"}, "denominator='literal'; expected 'sqrt' with"),
        ({"variant": "keras", "betas": (0.9, 1.0)}, "betas=(0.9, 1.0); expected (beta_1, beta_2), each in"),
        ({"variant": "keras", "sign_source": "previous"}, "sign_source='previous'; expected one of"),
        ({"variant": "keras", "decay": -1.0}, "decay=-1.0; expected decay >= 0"),
    ],
)
def test_arguments_of_the_other_variant_are_refused(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WAME([torch.nn.Parameter(torch.ones(2))], **options)


def test_state_dict_round_trip_keeps_the_variant():
    param = torch.nn.Parameter(torch.randn(5))
    optimizer = WAME([param], variant="keras", decay=1e-3)
    for _ in range(3):
        param.grad = torch.randn(5)
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())  # as torch.save and torch.load give it (no shared tensors)
    other = torch.nn.Parameter(param.detach().clone())
    resumed = WAME([other])  # built with the defaults: the loaded groups bring their variant
    resumed.load_state_dict(saved)
    group = resumed.param_groups[0]
    assert (group["variant"], group["decay"], group["eps"]) == ("keras", 1e-3, 1e-11)
    grad = torch.randn(5)
    param.grad, other.grad = grad.clone(), grad.clone()
    optimizer.step()
    resumed.step()
    assert torch.equal(param, other)
