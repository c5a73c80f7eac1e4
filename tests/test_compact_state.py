"""WAME(state_dtype="bf16"): zeta, z, theta in bfloat16 with keyed, unbiased stochastic rounding.

Every step's stored values are one of the two bfloat16 neighbours of the float32 rule's values, the weights
are the float32 rule's; rounding is unbiased where rounding to nearest makes a moving average stick; over
100 steps the run stays within measured bounds of the float32 run; runs are reproducible bit for bit; the
state_dtype is kept by state_dict and a state_dict of the other kind is refused.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import pytest
import torch
from launching import job_env
from test_wame_implementations import OPTIONS, gradients, make_params

from wame_dist import WAME
from wame_dist.deepspeed.config import wame_arguments
from wame_dist.hashing import key_of
from wame_dist.optim.compact_state import NOISE, stochastic_round_

IMPLEMENTATIONS = {
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
COMPACT = ("zeta", "z", "theta")


def bf16_neighbours(x: float) -> tuple[float, float]:
    """The bfloat16 numbers at or below and above ``|x|`` (8 significant bits), with ``x``'s sign: exact
    Python arithmetic, independent of the code under test."""
    magnitude = abs(x)
    spacing = 2.0 ** (math.floor(math.log2(magnitude)) - 7)
    down = math.floor(magnitude / spacing) * spacing
    up = down if down == magnitude else down + spacing
    return math.copysign(down, x), math.copysign(up, x)


def test_bf16_state_takes_7_bytes_per_weight():
    for implementation in IMPLEMENTATIONS.values():
        params = make_params(torch.float32)
        optimizer = WAME(params, state_dtype="bf16", **implementation)
        for p, g in zip(params, gradients(params, 0)):
            p.grad = g
        optimizer.step()
        for p in params:
            state = optimizer.state[p]
            assert state["prev_sign"].dtype == torch.int8
            assert all(state[key].dtype == torch.bfloat16 for key in COMPACT)
            per_weight = sum(state[key].element_size() for key in ("prev_sign", *COMPACT))
            assert per_weight == 7


@pytest.mark.parametrize("x", [1.0 + 2.0**-10, -(3.0 + 2.0**-9 + 2.0**-12), 0.01, 7.3e-6, 123.456])
def test_stochastic_rounding_lands_on_a_neighbour_with_the_right_odds(x):
    """2**16 positions: each result is one of x's two bfloat16 neighbours, and the share rounded away from
    zero is (|x| - down) / spacing within 4 standard deviations."""
    n = 1 << 16
    value = torch.full((n,), x, dtype=torch.float32)
    x = value[0].item()  # x as float32
    out = stochastic_round_(torch.empty(n, dtype=torch.bfloat16), value, key_of(7, 0, 2))
    down, up = bf16_neighbours(x)
    got = out.double()
    assert bool(((got == down) | (got == up)).all())
    p = (abs(x) - abs(down)) / (abs(up) - abs(down))
    share = (got == up).double().mean().item()
    assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_non_finite_values_and_bfloat16_numbers_are_stored_as_they_are():
    values = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0, 1.0, 0.0078125, -100.0])
    out = stochastic_round_(torch.empty(8, dtype=torch.bfloat16), values, key_of(1, 0, 0))
    assert torch.allclose(out.float(), values, rtol=0, atol=0, equal_nan=True)
    assert torch.tensor(1.0).copysign(out[4].float()).item() == -1.0  # -0.0 keeps its sign


def test_a_moving_average_converges_where_rounding_to_nearest_sticks():
    """theta <- 0.9 theta + 0.1 g**2 with g**2 = 1.01 theta_0: every change is below half a bfloat16 spacing
    at 1, so rounding to nearest never moves theta; stochastic rounding's mean follows the float64 average."""
    n, steps, target = 4096, 200, 1.01
    stochastic = torch.ones(n, dtype=torch.bfloat16)
    nearest = torch.ones(n, dtype=torch.bfloat16)
    exact = 1.0
    for t in range(1, steps + 1):
        stochastic_round_(stochastic, 0.9 * stochastic.float() + 0.1 * target, key_of(t, 0, 2))
        nearest = (0.9 * nearest.float() + 0.1 * target).to(torch.bfloat16)
        exact = 0.9 * exact + 0.1 * target
    assert torch.all(nearest == 1.0)
    assert abs(stochastic.double().mean().item() - exact) < 5e-4  # measured: 1.1e-4 (exact: 1.01)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize(
    "options", OPTIONS[:: len(OPTIONS) // 5], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_each_step_is_the_float32_step_with_its_state_rounded(implementation, options):
    """30 steps; before each, a float32 optimizer takes over the bfloat16 one's weights and state (exact
    upcasts); after the same gradient, the weights are the float32 run's bitwise and each stored value is
    a bfloat16 neighbour of the float32 run's."""
    compact_params, plain_params = make_params(torch.float32), make_params(torch.float32)
    compact = WAME(compact_params, lr=1e-2, state_dtype="bf16", **options, **IMPLEMENTATIONS[implementation])
    plain = WAME(plain_params, lr=1e-2, **options, **IMPLEMENTATIONS[implementation])
    for t in range(30):
        with torch.no_grad():
            for pc, pp in zip(compact_params, plain_params):
                pp.copy_(pc)
                if compact.state[pc]:
                    plain.state[pp] = {k: v.float().clone() for k, v in compact.state[pc].items()}
                    plain.state[pp]["prev_sign"] = compact.state[pc]["prev_sign"].clone()
        for pc, pp, g in zip(compact_params, plain_params, gradients(compact_params, t)):
            pc.grad, pp.grad = g.clone(), g.clone()
        compact.step()
        plain.step()
        for pc, pp in zip(compact_params, plain_params):
            assert torch.equal(pc, pp)
            assert torch.equal(compact.state[pc]["prev_sign"], plain.state[pp]["prev_sign"])
            for key in COMPACT:
                exact, stored = plain.state[pp][key].double(), compact.state[pc][key].double()
                spacing = torch.exp2(torch.floor(torch.log2(exact.abs())) - 7)
                assert bool(((stored == exact) | ((stored - exact).abs() < spacing)).all()), (t, key)


@pytest.mark.parametrize(
    "options",
    [{}, {"denominator": "literal"}, {"variant": "keras", "sign_source": "gradient", "weight_decay": 0.01}],
    ids=["algorithm1", "literal", "keras-gradient-sign"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_100_steps_stay_within_the_measured_bounds_of_the_float32_run(options, seed):
    """The same 100 gradients (independent of the weights, so the sign decisions are the same in both
    runs). Per tensor: the distance of the weights from the float32 run over their movement (L2 norms), and
    the root-mean-square relative distance of each state. Measured on 3 gradient streams (2026-12-01):
    weights 2.6e-3 - 9.2e-3; zeta 3.1e-3 - 3.3e-3, z 5.1e-3 - 6.0e-3 (one rounding is up to 2**-8 relative
    on average 2**-10, compounding over 100 steps), theta 5.7e-3 - 1.5e-2. Bounds: about 2x the largest."""

    def run(state_dtype):
        params = make_params(torch.float32, seed)
        start = [p.detach().clone() for p in params]
        optimizer = WAME(params, lr=1e-3, state_dtype=state_dtype, foreach=False, fused=False, **options)
        for t in range(100):
            for p, g in zip(params, gradients(params, t + 7919 * seed)):
                p.grad = g
            optimizer.step()
        return params, start, optimizer

    reference, start, plain = run("fp32")
    params, _, compact = run("bf16")
    for p_ref, p, w0 in zip(reference, params, start):
        if p.numel() == 1:
            continue
        assert (p_ref - p).norm() / (p_ref - w0).norm() < 2e-2
        for key, bound in (("zeta", 1e-2), ("z", 1e-2), ("theta", 3e-2)):
            exact = plain.state[p_ref][key]
            relative = (compact.state[p][key].float() - exact) / exact.abs().clamp_min(1e-12)
            assert relative.pow(2).mean().sqrt() < bound, key


def test_runs_are_reproducible_and_single_equals_foreach():
    def run(implementation):
        params = make_params(torch.float32)
        optimizer = WAME(params, lr=1e-2, state_dtype="bf16", **IMPLEMENTATIONS[implementation])
        for t in range(20):
            for p, g in zip(params, gradients(params, t)):
                p.grad = g
            optimizer.step()
        return params, optimizer

    runs = [run("single"), run("single"), run("foreach")]
    (params, optimizer), others = runs[0], runs[1:]
    for other_params, other in others:
        for p, q in zip(params, other_params):
            assert torch.equal(p, q)
            for key in ("prev_sign", *COMPACT):
                assert torch.equal(optimizer.state[p][key], other.state[q][key])


def resume_halfway(state_dtype: str, check_loaded=None):
    """12 steps straight; and the state_dict saved after 6 (through torch.save / weights-only load) loaded
    into a new optimizer, shown to ``check_loaded(resumed, resumed_params)``, which takes the last 6.
    Returns the straight params and optimizer, the resumed ones, and the saved state_dict."""
    params = make_params(torch.float32)
    optimizer = WAME(params, lr=1e-2, state_dtype=state_dtype)
    for t in range(12):
        if t == 6:
            buffer = io.BytesIO()
            torch.save(
                {"params": [p.detach().clone() for p in params], "opt": optimizer.state_dict()}, buffer
            )
        for p, g in zip(params, gradients(params, t)):
            p.grad = g
        optimizer.step()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(p) for p in saved["params"]]
    resumed = WAME(resumed_params, lr=1e-2, state_dtype=state_dtype)
    resumed.load_state_dict(saved["opt"])
    if check_loaded is not None:
        check_loaded(resumed, resumed_params)
    for t in range(6, 12):
        for p, g in zip(resumed_params, gradients(resumed_params, t)):
            p.grad = g
        resumed.step()
    return params, optimizer, resumed_params, resumed, saved["opt"]


def test_state_dict_keeps_the_state_dtype_and_resumes_exactly():
    def check_loaded(resumed, resumed_params):
        assert resumed.state[resumed_params[0]]["theta"].dtype == torch.bfloat16

    params, optimizer, resumed_params, resumed, _ = resume_halfway("bf16", check_loaded)
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        for key in COMPACT:
            assert torch.equal(optimizer.state[p][key], resumed.state[q][key])


@pytest.mark.parametrize("saved, built", [("bf16", "fp32"), ("fp32", "bf16"), (None, "bf16")])
def test_a_state_dict_of_the_other_state_dtype_is_refused(saved, built):
    """(None: a state_dict written before state_dtype existed holds float32 state.)"""
    params = make_params(torch.float32)
    optimizer = WAME(params, state_dtype=saved or "fp32")
    for p, g in zip(params, gradients(params, 0)):
        p.grad = g
    optimizer.step()
    state_dict = optimizer.state_dict()
    if saved is None:
        del state_dict["param_groups"][0]["state_dtype"]
    theirs = saved or "fp32"
    with pytest.raises(
        ValueError, match=f"holds state_dtype='{theirs}' state.*build it with state_dtype='{theirs}'"
    ):
        WAME(make_params(torch.float32), state_dtype=built).load_state_dict(state_dict)


def test_an_unknown_state_dtype_names_the_choices():
    with pytest.raises(
        ValueError, match=r"invalid state_dtype='4bit'; expected one of \('fp32', 'bf16', '8bit'\)"
    ):
        WAME(make_params(torch.float32), state_dtype="4bit")


def test_a_deepspeed_config_block_takes_the_state_dtype():
    assert wame_arguments({"lr": 1e-3, "state_dtype": "bf16"}) == {"lr": 1e-3, "state_dtype": "bf16"}


CLIENT_OPTIMIZER = """
import json, torch, deepspeed
from wame_dist import WAME
from wame_dist.deepspeed import register
register()
model = torch.nn.Linear(4, 2)
optimizer = WAME(model.parameters(), state_dtype="bf16")
engine, *_ = deepspeed.initialize(
    model=model, optimizer=optimizer, config={"train_batch_size": 2, "zero_optimization": {"stage": 2}}
)
engine.backward(engine(torch.ones(2, 4)).sum())
engine.step()
flat = optimizer.param_groups[0]["params"][0]
print(json.dumps({
    "place": optimizer.state_positions[flat], "numel": flat.numel(),
    "dtypes": {key: str(value.dtype) for key, value in optimizer.state[flat].items()},
}))
"""


def test_a_compact_state_client_optimizer_trains_under_zero_placed_in_its_group():
    """A WAME instance handed to DeepSpeed's own initialize (as HF Trainer and Lightning do): a real one-rank
    ZeRO-2 engine on gloo steps it with its state in bfloat16, the flat partition placed at the start of
    its group (the multi-rank runs are in tests/test_deepspeed_zero.py)."""
    env = job_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29613")
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_OPTIMIZER], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["place"] == [[found["numel"], 0, 0]]
    assert found["dtypes"] == {
        "step": "torch.float32", "prev_sign": "torch.int8",
        "zeta": "torch.bfloat16", "z": "torch.bfloat16", "theta": "torch.bfloat16",
    }  # fmt: skip


def test_the_fused_cpu_kernel_rounds_in_registers_bit_for_bit_as_the_torch_ops_do():
    """The CPU kernel given bfloat16 state (and each tensor's step, row and offset) against the definition:
    the same kernel on float32 copies of the state, then :func:`stochastic_round_` with
    ``key_of(step, row, k)``, the offset and the bits :data:`NOISE` names (an offset near 2**32 wraps).
    Rows of odd lengths (vector tails, several threads' grains), a state at infinity and NaN, weights and
    prev_signs identical, every stored bit identical."""
    from wame_dist.optim import cpu_kernel

    kernel = cpu_kernel.load()
    generator = torch.Generator().manual_seed(5)
    sizes, steps, offsets = (1, 17, 200_003), (1, 9, 123_456_789_012), (0, 2**32 - 5, 12_345)
    rows = []
    for n in sizes:
        grad = torch.randn(n, generator=generator)
        grad[: n // 7] *= 1e-3
        if n > 20:
            grad[3], grad[5] = 1e30, float("nan")  # theta overflows to inf; a NaN gradient
        rows.append(
            {
                "param": torch.randn(n, generator=generator),
                "grad": grad,
                "prev_sign": torch.randint(-1, 2, (n,), generator=generator, dtype=torch.int8),
                "zeta": torch.exp(torch.randn(n, generator=generator) * 2).bfloat16(),
                "z": torch.exp(torch.randn(n, generator=generator)).bfloat16(),
                "theta": torch.rand(n, generator=generator).pow(3).bfloat16(),
            }
        )
    hyper = {
        "lr": 1e-3, "step_size": 1e-3, "alpha": 0.9, "theta_decay": 0.9, "eta_minus": 0.1, "eta_plus": 1.2,
        "zeta_min": 0.01, "zeta_max": 100.0, "eps": 1e-8, "weight_decay": 0.0,
        "decoupled_weight_decay": False, "literal": False, "maximize": False, "keras": False,
        "weight_sign": False,
    }  # fmt: skip

    def columns(rows, state_dtype):
        return [
            [row[key].clone() if key not in COMPACT else row[key].to(state_dtype) for row in rows]
            for key in ("param", "grad", "prev_sign", *COMPACT)
        ]

    expected = columns(rows, torch.float32)
    kernel.wame_step_(*expected, **hyper)
    for i, step in enumerate(steps):
        for column, name in zip(expected[3:], COMPACT, strict=True):
            k, shift = NOISE[name]
            out = torch.empty_like(column[i], dtype=torch.bfloat16)
            column[i] = stochastic_round_(out, column[i], key_of(step, i, k), shift, offsets[i])
    got = columns(rows, torch.bfloat16)
    placed = {"state_steps": steps, "state_rows": range(len(rows)), "state_offsets": offsets}
    placed = {name: list(values) for name, values in placed.items()}
    kernel.wame_step_(*got, **hyper, **placed)
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.int8: torch.int8}
    for got_column, expected_column in zip(got, expected, strict=True):
        for mine, theirs in zip(got_column, expected_column, strict=True):
            assert mine.dtype == theirs.dtype
            assert torch.equal(mine.view(bits[mine.dtype]), theirs.view(bits[theirs.dtype]))  # NaN included
    assert got[5][2][3].isinf() and got[5][2][5].isnan()


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_a_parameter_cut_in_placed_pieces_rounds_as_the_whole(implementation):
    """What ZeRO does to a flat parameter: two optimizers each step one piece of it, placed at its offset
    in the whole (:meth:`WAME.place`); after 20 steps weights and every state bit equal those of one
    optimizer stepping the uncut tensor."""
    generator = torch.Generator().manual_seed(11)
    whole = torch.nn.Parameter(torch.randn(10_001, generator=generator))
    pieces = [torch.nn.Parameter(part.clone()) for part in whole.detach().split(6_000)]
    options = {"lr": 1e-2, "state_dtype": "bf16", **IMPLEMENTATIONS[implementation]}
    reference = WAME([whole], **options)
    cut = [WAME([piece], **options) for piece in pieces]
    for optimizer, piece, offset in zip(cut, pieces, (0, 6_000), strict=True):
        optimizer.place({piece: (0, offset)})
    for _ in range(20):
        gradient = torch.randn(whole.shape, generator=generator)
        whole.grad = gradient.clone()
        for piece, part in zip(pieces, gradient.split(6_000), strict=True):
            piece.grad = part.clone()
        reference.step()
        for optimizer in cut:
            optimizer.step()
    assert torch.equal(torch.cat([piece.detach() for piece in pieces]), whole.detach())
    for key in ("prev_sign", *COMPACT):
        joined = torch.cat([opt.state[piece][key] for opt, piece in zip(cut, pieces, strict=True)])
        assert torch.equal(joined, reference.state[whole][key]), key


def test_pieces_of_two_parameters_in_one_tensor_round_as_the_parameters():
    """What ZeRO-3 does: each rank's tensor is a piece of every parameter laid end to end, placed in pieces
    (length, row, offset); after 20 steps both ranks' tensors hold exactly the uncut parameters' values and
    state. A placement whose pieces do not add up is refused."""
    generator = torch.Generator().manual_seed(3)
    half = (5_000, 256)  # each of two ranks holds half of each parameter
    wholes = [torch.nn.Parameter(torch.randn(2 * n, generator=generator)) for n in half]
    reference = WAME(wholes, lr=1e-2, state_dtype="bf16")
    reference.place({wholes[0]: (0, 0), wholes[1]: (0, 2 * half[0])})

    def rank_piece(tensors, rank):
        return torch.cat([t.detach()[rank * n : (rank + 1) * n] for t, n in zip(tensors, half)])

    ranks = [torch.nn.Parameter(rank_piece(wholes, rank)) for rank in range(2)]
    optimizers = [WAME([flat], lr=1e-2, state_dtype="bf16") for flat in ranks]
    for rank, (optimizer, flat) in enumerate(zip(optimizers, ranks)):
        optimizer.place({flat: [(half[0], 0, rank * half[0]), (half[1], 0, 2 * half[0] + rank * half[1])]})
    for _ in range(20):
        gradients = [torch.randn(w.shape, generator=generator) for w in wholes]
        for w, g in zip(wholes, gradients):
            w.grad = g.clone()
        for rank, flat in enumerate(ranks):
            flat.grad = rank_piece(gradients, rank)
        reference.step()
        for optimizer in optimizers:
            optimizer.step()
    for rank, (optimizer, flat) in enumerate(zip(optimizers, ranks)):
        assert torch.equal(flat.detach(), rank_piece(wholes, rank))
        for key in ("prev_sign", *COMPACT):
            expected = rank_piece([reference.state[w][key] for w in wholes], rank)
            assert torch.equal(optimizer.state[flat][key], expected), (rank, key)
    with pytest.raises(ValueError, match="pieces of 5256 elements for a parameter of 10000"):
        optimizers[0].place({wholes[0]: [(5_000, 0, 0), (256, 0, 9)]})


def test_places_survive_deepcopy_and_pickle():
    """A deep copy (and a pickle) of a placed optimizer keeps each parameter's place, keyed by its copy."""
    import copy
    import pickle

    model = torch.nn.Linear(3, 2)
    optimizer = WAME(model.parameters(), state_dtype="bf16")
    optimizer.place({model.weight: (4, 100)})
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        ((weight, _),) = [group["params"] for group in clone.param_groups]
        assert clone.state_positions == {weight: [(6, 4, 100)]}
