"""Run by tests/test_wame_implementations.py with TRITON_INTERPRET=1: the CUDA kernel, interpreted on CPU
tensors, against the single-tensor path, on several tensors of awkward sizes updated by one launch (block
edges, a tensor smaller than a block, an empty one).

Triton's interpreter evaluates tl.fma as x * y + z in numpy (two roundings): one ulp more than the 2 a GPU's
fused multiply-add gives on these 3000 weights (4 ulps were seen on 6 x 20,000 weights with other seeds), and
with L2 decay (grad + wd * w, which can cancel) only a relative agreement.
"""

import torch

from wame_dist.optim import triton_kernel
from wame_dist.optim.wame import _single_tensor_wame

ULPS = 3
HYPER = dict(
    lr=1e-2, step_size=1e-2, alpha=0.9, theta_decay=0.9, eta_minus=0.1, eta_plus=1.2, zeta_min=0.01,
    zeta_max=100.0, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, literal=False, maximize=False,
    keras=False, weight_sign=False, grad_scale=None, found_inf=None,
)  # fmt: skip
L2 = {"weight_decay": 0.01}
KERAS = {"keras": True, "theta_decay": 0.999, "step_size": 3e-3, "eps": 1e-11}
CASES = (
    {},
    {"maximize": True},
    {"weight_decay": 0.01, "decoupled_weight_decay": True},
    {"literal": True},
    L2,
    {**KERAS, "weight_sign": True},
    {**KERAS, "maximize": True, "weight_decay": 0.01, "decoupled_weight_decay": True},
)


def ulps(x, y, scale):
    spacing = torch.nextafter(scale.abs(), torch.tensor(torch.inf)) - scale.abs()
    return ((x - y).abs() / spacing).max().item()


SIZES = (1024, 5, 1900, 71, 0)  # 3000 weights in all


def check(dtype, options):
    generator = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    w = torch.randn(n, generator=generator).to(dtype)
    initial_z = 1.0 if options.get("keras") else 0.0
    state = [
        torch.zeros(n, dtype=torch.int8),
        *(torch.full((n,), v, dtype=dtype) for v in (1.0, initial_z, 0.0)),
    ]
    for _ in range(6):
        g = (torch.randn(n, generator=generator) * (torch.rand(n, generator=generator) > 0.1)).to(dtype)
        a = [w.clone(), *[s.clone() for s in state]]
        b = [w.clone(), *[s.clone() for s in state]]
        _single_tensor_wame([a[0]], [g], *[[t] for t in a[1:]], **{**HYPER, **options})
        triton_kernel.wame_step_(*[list(t.split(SIZES)) for t in (b[0], g, *b[1:])], **{**HYPER, **options})
        assert torch.equal(a[1], b[1]), "prev_sign"
        if dtype == torch.float32 and options != L2:
            scale = torch.maximum(torch.maximum(w.abs(), a[0].abs()), (a[0] - w).abs())
            assert ulps(a[0], b[0], scale) <= ULPS, (options, "weight")
            for name, x, y in zip(("zeta", "z", "theta"), a[2:], b[2:]):
                assert ulps(x, y, x) <= ULPS, (options, name)
        else:
            low = dtype == torch.bfloat16
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=2e-2 if low else 1e-4, atol=1e-3 if low else 1e-5)
        w, state = a[0], a[1:]


def check_amp(dtype):
    """torch.amp's protocol: with grad_scale the kernel unscales the scaled gradient as it reads it (the
    single-tensor run gets the unscaled one); with found_inf set the step writes nothing at all."""
    generator = torch.Generator().manual_seed(1)
    n = 3000
    w = torch.randn(n, generator=generator).to(dtype)
    state = [torch.randint(-1, 2, (n,), dtype=torch.int8, generator=generator)]
    state += [(torch.rand(n, generator=generator) + 0.5).to(dtype) for _ in range(3)]
    g = torch.randn(n, generator=generator).to(dtype)
    scale = torch.tensor(1024.0)
    a = [w.clone(), *[s.clone() for s in state]]
    b = [w.clone(), *[s.clone() for s in state]]
    _single_tensor_wame([a[0]], [g], *[[t] for t in a[1:]], **HYPER)
    triton_kernel.wame_step_([b[0]], [g * 1024], *[[t] for t in b[1:]], **{**HYPER, "grad_scale": scale})
    assert torch.equal(a[1], b[1]), "prev_sign"
    low = dtype == torch.bfloat16
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-2 if low else 1e-5, atol=1e-3 if low else 1e-6)
    skipped = [w.clone(), *[s.clone() for s in state]]
    amp = {"grad_scale": scale, "found_inf": torch.tensor(1.0)}
    triton_kernel.wame_step_([skipped[0]], [g], *[[t] for t in skipped[1:]], **{**HYPER, **amp})
    for before, after in zip([w, *state], skipped):
        assert torch.equal(before, after), "found_inf must skip every store"


for dtype in (torch.float32, torch.bfloat16):
    for options in CASES:
        check(dtype, options)
    check_amp(dtype)
print("triton kernel agrees")
