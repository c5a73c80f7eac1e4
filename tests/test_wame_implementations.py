"""The three WAME implementations agree: single and foreach bitwise, fused within 2 ulp per step."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wame_dist import WAME
from wame_dist.optim import fused

OPTIONS = [
    dict(zip(("maximize", "weight_decay", "decoupled_weight_decay", "denominator"), combo))
    for combo in itertools.product((False, True), (0.0, 0.01), (False, True), ("sqrt", "literal"))
    if combo[1] or not combo[2]  # decoupled only matters with weight decay
] + [  # the Keras variant: both sign sources, its decay and betas, with each kind of weight decay
    {"variant": "keras", "sign_source": "weight", "decay": 1e-3},
    {"variant": "keras", "sign_source": "gradient", "maximize": True, "weight_decay": 0.01},
    {"variant": "keras", "sign_source": "weight", "weight_decay": 0.01, "decoupled_weight_decay": True},
    {"variant": "keras", "sign_source": "gradient", "betas": (0.8, 0.99), "maximize": True},
]

#: Parameter shapes: large and small, a scalar, a 4-d conv weight, and a non-contiguous (transposed) one.
SHAPES = [(20_001,), (33, 7), (), (8, 3, 5, 5)]


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype)) for s in SHAPES]
    params.append(torch.nn.Parameter(torch.randn(9, 4, generator=generator).to(dtype).t()))  # non-contiguous
    return params


def gradients(params, step: int) -> list[torch.Tensor]:
    """Random gradients with exact zeros in ~10% of the elements (the sign-agreement 0 case), magnitudes
    >= 0.05 elsewhere (float16's g**2 would underflow below ~1e-3, as it does for Adam's second moment)."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for p in params:
        normal = torch.randn(p.shape, generator=generator)
        g = normal.sign() * (0.05 + normal.abs()) * (torch.rand(p.shape, generator=generator) > 0.1)
        grads.append(
            g.to(p.dtype).as_strided(p.shape, p.stride()) if not p.is_contiguous() else g.to(p.dtype)
        )
    return grads


def ulp_distance(reference: torch.Tensor, other: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """|reference - other| in units of the spacing of floats at ``scale`` (element-wise)."""
    spacing = torch.nextafter(scale.abs(), torch.tensor(torch.inf, dtype=scale.dtype)) - scale.abs()
    return (reference - other).abs() / spacing


#: zeta_bounds set half-way through every side-by-side run: zeta has grown past 1.2 (and shrunk below
#: 0.05) in places by then, so the steps after it hold zetas outside the bounds, kept where c = 0.
NARROWED_BOUNDS = (0.05, 1.2)


def step_both(options, dtype, first, second, steps=12, compare=None):
    """Runs two implementations side by side; ``compare(params_a, params_b, before, opt_a, opt_b)`` after
    each step. Half-way, both narrow their zeta bounds to ``NARROWED_BOUNDS``. For fused-vs-single, the
    second run is re-synchronised to the first after each step, so the check is per step (differences
    would otherwise compound through the sign decisions)."""
    params_a, params_b = make_params(dtype), make_params(dtype)
    opt_a = WAME(params_a, lr=1e-2, **options, **first)
    opt_b = WAME(params_b, lr=1e-2, **options, **second)
    for t in range(steps):
        if t == steps // 2:
            for optimizer in (opt_a, opt_b):
                optimizer.param_groups[0]["zeta_bounds"] = NARROWED_BOUNDS
            zetas = torch.cat([opt_a.state[p]["zeta"].flatten().float() for p in params_a])
            assert zetas.max() > NARROWED_BOUNDS[1] and zetas.min() < NARROWED_BOUNDS[0]
        before = [p.detach().clone() for p in params_a]
        for pa, pb, g in zip(params_a, params_b, gradients(params_a, t)):
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        compare(params_a, params_b, before, opt_a, opt_b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_single_and_foreach_agree_bitwise(options, dtype):
    def compare(params_a, params_b, before, opt_a, opt_b):
        for pa, pb in zip(params_a, params_b):
            assert torch.equal(pa, pb)
            for key in ("prev_sign", "zeta", "z", "theta", "step"):
                assert torch.equal(opt_a.state[pa][key], opt_b.state[pb][key]), key

    step_both(options, dtype, {"foreach": False, "fused": False}, {"foreach": True}, compare=compare)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fused_within_two_ulp_of_single(options, dtype):
    """State agrees to 2 ulp; the weight to 2 ulp of the largest magnitude in w <- w + step (its error
    is that of the step: torch's CPU sqrt (MKL) is not correctly rounded, the kernel's is)."""

    def compare(params_a, params_b, before, opt_a, opt_b):
        for pa, pb, w0 in zip(params_a, params_b, before):
            scale = torch.maximum(torch.maximum(w0.abs(), pa.detach().abs()), (pa.detach() - w0).abs())
            assert ulp_distance(pa.detach(), pb.detach(), scale).max() <= 2
            sa, sb = opt_a.state[pa], opt_b.state[pb]
            assert torch.equal(sa["prev_sign"], sb["prev_sign"])
            for key in ("zeta", "z", "theta"):
                assert ulp_distance(sa[key], sb[key], sa[key]).max() <= 2, key
            with torch.no_grad():
                pb.copy_(pa)
                for key in ("zeta", "z", "theta"):
                    sb[key].copy_(sa[key])

    step_both(options, dtype, {"foreach": False, "fused": False}, {"fused": True}, compare=compare)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("other", [{"foreach": True}, {"fused": True}], ids=["foreach", "fused"])
def test_half_precision_close_to_single(dtype, other):
    """Half types agree to their precision, not bitwise: the kernel computes in float and rounds once, and
    torch's foreach ops round a Python scalar to the tensor's dtype first (torch.mul_ does not)."""

    def compare(params_a, params_b, before, opt_a, opt_b):
        for pa, pb in zip(params_a, params_b):
            torch.testing.assert_close(pa, pb, rtol=2e-2, atol=2e-3)
            assert opt_b.state[pb]["zeta"].dtype == dtype and opt_b.state[pb]["prev_sign"].dtype == torch.int8

    step_both({}, dtype, {"foreach": False, "fused": False}, other, steps=8, compare=compare)


def test_default_picks_fused_on_cpu(monkeypatch):
    calls = []
    real = fused.fused_wame
    monkeypatch.setattr(fused, "fused_wame", lambda *a, **k: calls.append(1) or real(*a, **k))
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    WAME([param]).step()
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_first_step_of_zero_gradient_is_finite(dtype, implementation):
    param = torch.nn.Parameter(torch.ones(4, dtype=dtype))
    param.grad = torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=dtype)
    WAME([param], **implementation).step()
    assert torch.isfinite(param).all() and param[0] == 1 and param[3] == 1


def test_triton_kernel_under_interpreter_matches_single():
    """The CUDA kernel, run by Triton's interpreter on CPU tensors, agrees with the single-tensor path."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = Path(__file__).with_name("check_triton_interpreter.py")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton kernel agrees" in proc.stdout


AOT_COMPILE_CHECK = textwrap.dedent(
    """
    import re
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from wame_dist.optim.triton_kernel import _wame_kernel

    scalars = ("step_size", "decay", "weight_decay", "one_minus_alpha", "theta_decay",
               "one_minus_theta_decay", "eta_minus", "eta_plus", "zeta_min", "zeta_max", "eps")
    signature = {"pointers": "*i64", "numels": "*i64", "block_tensor": "*i32", "block_start": "*i64",
                 "grad_scale_ptr": "*fp32", "found_inf_ptr": "*fp32"}
    signature |= dict.fromkeys(scalars, "fp32")
    for capability in (80, 90):
        for dtype in (tl.float32, tl.float16, tl.bfloat16):
            cases = ((1, 1, 0, 0, 0, 0), (0, 0, 1, 1, 1, 0), (1, 0, 2, 0, 0, 1), (1, 1, 0, 0, 1, 1))
            for full, aligned, decay, literal, amp, keras in cases:
                constants = {"DTYPE": dtype, "MAXIMIZE": not full, "DECAY": decay, "LITERAL": bool(literal),
                             "KERAS": bool(keras), "WEIGHT_SIGN": bool(keras and decay),
                             "BLOCK": 1024, "FULL": bool(full), "ALIGNED": bool(aligned),
                             "HAS_GRAD_SCALE": bool(amp), "HAS_FOUND_INF": bool(amp)}
                types = signature | dict.fromkeys(constants, "constexpr")
                source = ASTSource(fn=_wame_kernel, signature=types, constexprs=constants)
                kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32))
                assert kernel.asm["cubin"], "no machine code"
                vectors = re.findall(r"(?:ld|st)\\.global\\.v4", kernel.asm["ptx"])
                assert bool(vectors) == (full and aligned), (capability, dtype, full, aligned, len(vectors))
    print("compiled")
    """
)


def test_triton_kernel_compiles_for_ampere_and_hopper():
    """The CUDA kernel, compiled ahead of time by Triton's real compiler and ptxas for sm_80 and sm_90 (no GPU
    needed): what the interpreter cannot check. Whole blocks of 16-byte-aligned tensors use 16-byte vector
    loads and stores (also with torch.amp's grad_scale and found_inf), partial or unaligned ones scalar
    accesses."""
    proc = subprocess.run(
        [sys.executable, "-c", AOT_COMPILE_CHECK], capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
    )  # fmt: skip
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stdout + proc.stderr


FALLBACK_CHECK = textwrap.dedent(
    """
    import warnings
    import torch
    from wame_dist import WAME

    def run(**flags):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(1000))
        opt = WAME([p], **flags)
        for _ in range(3):
            p.grad = torch.randn(1000)
            opt.step()
        return p.detach()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = run()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("could not be built" in m and "multi-tensor" in m for m in messages), messages
    assert torch.equal(default, run(foreach=True))
    try:
        run(fused=True)
    except RuntimeError as error:
        assert "fused=True" in str(error) and "C++ compiler" in str(error), error
        print("fallback ok")
    """
)


def test_without_a_compiler_default_falls_back_with_a_warning(tmp_path):
    env = {**os.environ, "CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", FALLBACK_CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "fallback ok" in proc.stdout, proc.stdout + proc.stderr


LOAD_KERNEL = textwrap.dedent(
    """
    from wame_dist.optim import _torch_compat, cpu_kernel
    cpu_kernel.load()
    name = cpu_kernel.build_name()
    print(cpu_kernel.__file__)
    print(_torch_compat.extension_build_directory(name) + "/" + name + ".so")
    """
)


def test_two_checkouts_share_one_kernel_build(tmp_path):
    """Two checkouts of the same source, used in turn with one extension cache: the first builds the kernel
    (saying so, once), the others load that build without recompiling it."""
    for checkout in ("a", "b"):
        shutil.copytree(
            Path(__file__).parents[1] / "wame_dist",
            tmp_path / checkout / "wame_dist",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    cache = tmp_path / "torch_extensions"

    def load(checkout: str) -> tuple[str, Path, int]:
        env = {**os.environ, "PYTHONPATH": str(tmp_path / checkout), "TORCH_EXTENSIONS_DIR": str(cache)}
        env.pop("RANK", None)
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_KERNEL],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        module_file, library = proc.stdout.split()
        assert Path(module_file).is_relative_to(tmp_path / checkout)
        return proc.stderr, Path(library), Path(library).stat().st_mtime_ns

    stderr, library, built = load("a")
    assert stderr.count("building WAME's fused CPU kernel (first use, ~30 s)") == 1, stderr
    for checkout in ("b", "a", "b"):
        stderr, same_library, mtime = load(checkout)
        assert "building" not in stderr and same_library == library and mtime == built, stderr
