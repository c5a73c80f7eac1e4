"""WAME follows Algorithm 1: trajectories against an independent float64 transcription, and properties."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from conftest import IMPLEMENTATIONS
from hypothesis import given, settings
from reference_wame import ReferenceWAME

from wame_dist import WAME

#: Relative/absolute tolerance of float64 trajectories against the reference: both are float64, and the
#: only differences are roundings of algebraically equal expressions (lerp vs. a*z + (1-a)*zeta).
RTOL, ATOL = 1e-10, 1e-13


def quadratic_gradients(n: int, steps: int, seed: int) -> tuple[list[float], list[float], list[list[float]]]:
    """Curvatures, centres and per-step noise of a noisy quadratic f(w) = sum a_i (w_i - c_i)^2 / 2.

    The first two elements have zero curvature and zero noise: their gradient is always exactly 0.
    """
    generator = torch.Generator().manual_seed(seed)
    curvature = torch.rand(n, generator=generator, dtype=torch.float64) * 2
    centre = torch.randn(n, generator=generator, dtype=torch.float64)
    noise = torch.randn(steps, n, generator=generator, dtype=torch.float64) * 0.5
    curvature[:2] = 0
    noise[:, :2] = 0
    return curvature.tolist(), centre.tolist(), noise.tolist()


def float64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


CASES = {
    "defaults": {},
    "literal": {"denominator": "literal", "lr": 1e-5},
    "l2": {"weight_decay": 0.1},
    "decoupled": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "maximize": {"maximize": True},
    "custom": {"alpha": 0.5, "etas": (0.5, 1.5), "zeta_bounds": (0.1, 4.0), "eps": 1e-6, "lr": 1e-2},
}


def reference_for(weights: list[float], options: dict) -> ReferenceWAME:
    eta_minus, eta_plus = options.get("etas", (0.1, 1.2))
    zeta_min, zeta_max = options.get("zeta_bounds", (0.01, 100.0))
    return ReferenceWAME(
        list(weights),
        lr=options.get("lr", 1e-3),
        alpha=options.get("alpha", 0.9),
        eta_minus=eta_minus,
        eta_plus=eta_plus,
        zeta_min=zeta_min,
        zeta_max=zeta_max,
        eps=options.get("eps", 1e-8),
        weight_decay=options.get("weight_decay", 0.0),
        decoupled=options.get("decoupled_weight_decay", False),
        literal=options.get("denominator", "sqrt") == "literal",
        maximize=options.get("maximize", False),
    )


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_reference(case, implementation):
    options = CASES[case]
    n, steps = 64, 60
    curvature, centre, noise = quadratic_gradients(n, steps, seed=1)
    start = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    param = torch.nn.Parameter(start.clone())
    optimizer = WAME([param], **options, **implementation)
    reference = reference_for(start.tolist(), options)
    sign = -1.0 if options.get("maximize") else 1.0  # maximize: ascend -f, so the descent is the same
    for t in range(steps):
        grads = [
            sign * (a * (w - c) + e) for a, w, c, e in zip(curvature, reference.weights, centre, noise[t])
        ]
        param.grad = torch.tensor(grads, dtype=torch.float64)
        optimizer.step()
        reference.step(grads)
        state = optimizer.state[param]
        torch.testing.assert_close(param.detach(), float64(reference.weights), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(state["zeta"], float64(reference.zeta), rtol=RTOL, atol=0)
        torch.testing.assert_close(state["z"], float64(reference.z), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(state["theta"], float64(reference.theta), rtol=RTOL, atol=ATOL)
        assert state["prev_sign"].tolist() == reference.prev_sign
        assert state["step"].item() == t + 1
    if case != "l2":  # (L2 decay makes every gradient non-zero)
        assert reference.zeta[:2] == [1.0, 1.0], "elements whose gradient is always 0 keep zeta = 1"
    assert min(reference.zeta) < 1.0 < max(reference.zeta), "the run must both grow and shrink zeta"


gradient_values = st.one_of(
    st.just(0.0), st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_subnormal=False)
)


@settings(max_examples=60, deadline=None)
@given(
    grads=st.lists(st.lists(gradient_values, min_size=6, max_size=6), min_size=1, max_size=8),
    alpha=st.floats(min_value=0.0, max_value=0.99),
    eta_minus=st.floats(min_value=0.05, max_value=0.95),
    eta_plus=st.floats(min_value=1.05, max_value=3.0),
    zeta_min=st.floats(min_value=0.001, max_value=1.0),
    zeta_max=st.floats(min_value=1.0, max_value=1000.0),
    name=st.sampled_from(list(IMPLEMENTATIONS)),
)
def test_state_follows_its_definitions(grads, alpha, eta_minus, eta_plus, zeta_min, zeta_max, name):
    param = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    optimizer = WAME(
        [param],
        alpha=alpha,
        etas=(eta_minus, eta_plus),
        zeta_bounds=(zeta_min, zeta_max),
        **IMPLEMENTATIONS[name],
    )
    prev_sign = torch.zeros(6, dtype=torch.int8)
    zeta, z, theta = float64([1.0] * 6), float64([0.0] * 6), float64([0.0] * 6)
    for step_grads in grads:
        g = torch.tensor(step_grads, dtype=torch.float64)
        param.grad = g
        optimizer.step()
        state = optimizer.state[param]
        agreement = torch.sign(g).to(torch.int8) * prev_sign
        expected_zeta = torch.where(
            agreement > 0,
            torch.clamp(zeta * eta_plus, max=zeta_max),
            torch.where(agreement < 0, torch.clamp(zeta * eta_minus, min=zeta_min), zeta),
        )
        assert torch.equal(state["zeta"], expected_zeta)
        assert bool(((state["zeta"] >= zeta_min) & (state["zeta"] <= zeta_max)).all())
        unchanged = agreement == 0  # zeta moves only where consecutive signs agree or disagree
        assert torch.equal(state["zeta"][unchanged], zeta[unchanged])
        torch.testing.assert_close(
            state["z"], alpha * z + (1 - alpha) * state["zeta"], rtol=1e-12, atol=1e-300
        )
        torch.testing.assert_close(
            state["theta"], alpha * theta + (1 - alpha) * g * g, rtol=1e-12, atol=1e-300
        )
        assert torch.equal(state["prev_sign"], torch.sign(g).to(torch.int8))
        prev_sign, zeta, z, theta = (state[k].clone() for k in ("prev_sign", "zeta", "z", "theta"))


def test_non_finite_gradient_is_defined_element_by_element(implementation):
    """NaN: zeta kept, prev_sign 0, theta and weight NaN. inf: zeta moves by its sign, theta inf, weight
    NaN. Every other element is updated exactly as if the bad elements were not there."""
    torch.manual_seed(0)
    start = torch.randn(6)
    warm_up = torch.tensor([1.0, -1.0, -1.0, 2.0, -3.0, 0.5])
    bad = torch.tensor([math.nan, math.inf, -math.inf, 0.7, -0.2, 0.0])

    param = torch.nn.Parameter(start.clone())
    optimizer = WAME([param], lr=1e-2, **implementation)
    for g in (warm_up, bad):
        param.grad = g.clone()
        optimizer.step()
    state = optimizer.state[param]

    healthy = torch.nn.Parameter(start[3:].clone())
    healthy_optimizer = WAME([healthy], lr=1e-2, **implementation)
    for g in (warm_up, bad):
        healthy.grad = g[3:].clone()
        healthy_optimizer.step()

    assert state["prev_sign"][:3].tolist() == [0, 1, -1]
    assert state["zeta"][:3].tolist() == pytest.approx(
        [1.0, 0.1, 1.2]
    )  # kept; shrunk (- then +inf); grown (- then -inf)
    assert torch.isfinite(state["z"][:3]).all()
    assert torch.isnan(state["theta"][0]) and torch.isinf(state["theta"][1:3]).all()
    assert torch.isnan(param[:3]).all()
    for key in ("zeta", "z", "theta", "prev_sign"):
        assert torch.equal(state[key][3:], healthy_optimizer.state[healthy][key])
    assert torch.equal(param.detach()[3:], healthy.detach())


def test_zeta_outside_new_bounds_is_kept_where_signs_do_not_meet(implementation):
    """Bounds narrowed mid-run (or state loaded from a run with other bounds): where c = 0 zeta is left as
    it is, even outside the new bounds; where the signs agree or differ it moves and is clipped (lines 4-8).
    Element 0 gets a zero gradient, element 1 an agreeing one, element 2 a differing one."""
    start = [0.5, -0.5, 0.25]
    param = torch.nn.Parameter(float64(start))
    optimizer = WAME([param], **implementation)
    reference = reference_for(start, {})
    schedule = [[1.0, 1.0, 1.0]] * 3 + [[0.0, 1.0, -1.0], [0.0, 1.0, 1.0]]
    for t, grads in enumerate(schedule):
        if t == 3:
            optimizer.param_groups[0]["zeta_bounds"] = (0.01, 1.2)
            reference.zeta_max = 1.2
        param.grad = float64(grads)
        optimizer.step()
        reference.step(grads)
        torch.testing.assert_close(optimizer.state[param]["zeta"], float64(reference.zeta), rtol=RTOL, atol=0)
        torch.testing.assert_close(param.detach(), float64(reference.weights), rtol=RTOL, atol=ATOL)
        if t == 2:
            assert reference.zeta == pytest.approx([1.44] * 3)
    assert reference.zeta == pytest.approx([1.44, 1.2, 0.0144])  # 1.44 * 0.1 * 0.1
