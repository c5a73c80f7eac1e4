"""The CUDA path in one command: correctness, optimizer-step speed and training speed, as one Markdown report.

    python benchmarks/gpu_check.py [--out report.md]        # on a machine with a GPU (under 6 min on an H200)
    python benchmarks/gpu_check.py --dry-run                # CPU, tiny sizes: keeps the script from rotting

1. **Correctness**: ``WAME(fused=True)`` (the Triton kernel on CUDA) against the single-tensor rule on the
   same device, 50 steps of fixed random gradients over tensors of awkward sizes, every option (fp32 and
   bf16 parameters, both denominators, maximize, L2 and decoupled weight decay, the Keras variant). fp32:
   ``prev_sign`` and ``zeta`` equal after 50 steps, the other tensors within ``TOLERANCE``. bf16:
   ``prev_sign`` equal, and each step, started from the same state, within ``TOLERANCE`` (bf16 storage
   rounds every step, so two correct paths drift apart over many steps: the drift of both from an
   independent float64 transcription of Algorithm 1 or of the Keras code, ``tests/reference_wame.py``, is
   printed). State dtypes: ``prev_sign`` int8, the rest the parameter's dtype.
2. **Optimizer step**: 20M and 200M fp32 parameters as one tensor and as 200 tensors; WAME fused and
   foreach against torch's fused and foreach Adam, interleaved round by round; median ms/step, GB/s
   (WAME moves 38 B/param, Adam 28) and % of the device's copy bandwidth measured in the same run.
   Targets: fused WAME >= 70% of the copy bandwidth on the 200M one-tensor row, <= 1.4x fused Adam.
3. **Training**: ``launch/train.py`` on CIFAR-10-shaped data written in the real CIFAR format (random
   images with a class-dependent mean, so the loss can fall), Table 1b, global batch 128, data on the GPU,
   ``--precision bf16-autocast --compile``; 3 epochs, the last 2 timed (the first absorbs compilation).
   Rows: DeepSpeed without ZeRO (stage 0) and ZeRO-2, one rank each. Reported: seconds per epoch (training
   and the test pass), training samples/s, the GPU memory peak, and the projected time of the paper's 100
   epochs (the paper: 421 min on its 2017 GPU; target: under 3 min).
4. **Lightning**: a stock ``lightning`` Trainer with ``DeepSpeedStrategy(stage=2)`` and WAME from
   ``configure_optimizers`` (CUDA only: stock Lightning refuses DeepSpeed on CPU): DeepSpeed must step WAME,
   WAME's ``step`` must equal the trainer's steps, and the loss must fall.

A failed correctness check or a crashed section makes the exit status non-zero; speed targets are reported
as met or missed. ``--dry-run`` runs the same code on the CPU at tiny sizes (the fused kernel is then the
C++ one; the Triton kernel itself is checked on CPU by ``tests/check_triton_interpreter.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "launch")]

from reference_wame import ReferenceKerasWAME, ReferenceWAME  # noqa: E402 (tests/: float64 transcriptions)

from wame_dist import WAME, atomic  # noqa: E402
from wame_dist.optim.wame import wame as wame_functional  # noqa: E402

#: |fused - unfused| <= atol + rtol * |unfused|: fp32 after all steps (the kernel: <= 2 ulp per step);
#: bf16 for one step from the same state (as tests/check_triton_interpreter.py: 2-3 bf16 ulps).
TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2e-2, 1e-3)}
BYTES_PER_PARAM = {"WAME": 38, "Adam": 28}  # read + written per fp32 parameter by one step
PAPER_MINUTES_100_EPOCHS = 421  # Mosca & Magoulas, CIFAR-10, Table 2


@dataclass(frozen=True)
class Sizes:
    """What a run measures: full sizes on a GPU, tiny ones for ``--dry-run``."""

    correctness: tuple[int, ...]  # tensor sizes of the correctness check (block edges, a tiny one)
    steps: int  # of the correctness check
    step_params: tuple[int, ...]  # parameters in all, per optimizer-step row
    step_rounds: int
    steps_per_round: int
    copy_bytes: int
    train_images: int
    test_images: int
    width: float
    compile: bool
    precision: str  # bf16 autocast on the GPU; fp32 on the CPU (bf16 convolutions are emulated there)


GPU = Sizes(
    correctness=(4099, 1024, 7, 2048, 513),
    steps=50,
    step_params=(20_000_000, 200_000_000),
    step_rounds=15,
    steps_per_round=20,
    copy_bytes=2**30,
    train_images=50_000,
    test_images=10_000,
    width=1.0,
    compile=True,
    precision="bf16-autocast",
)
DRY = Sizes(
    correctness=(1030, 7, 513),
    steps=10,
    step_params=(200_000,),
    step_rounds=3,
    steps_per_round=2,
    copy_bytes=2**22,
    train_images=256,
    test_images=128,
    width=0.25,
    compile=False,
    precision="fp32",
)


class Report:
    """Collects Markdown and failures; a section that raises is reported and counted as failed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failures: list[str] = []

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def check(self, ok: bool, what: str) -> str:
        if not ok:
            self.failures.append(what)
        return "ok" if ok else "**FAILED**"

    @contextlib.contextmanager
    def section(self, title: str) -> Iterator[None]:
        self.add("", f"## {title}", "")
        started = time.perf_counter()
        try:
            yield
        except Exception:  # a broken section is a result: report it and go on with the others
            self.failures.append(title)
            self.add("```", traceback.format_exc().rstrip(), "```")
        self.add("", f"({time.perf_counter() - started:.0f} s)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- 1. correctness ---------------------------------------------------------------------------------------

CASES = {
    "sqrt": {},
    "literal": {"denominator": "literal", "lr": 1e-5},
    "maximize": {"maximize": True},
    "L2 decay": {"weight_decay": 0.01},
    "decoupled decay": {"weight_decay": 0.01, "decoupled_weight_decay": True},
    "keras (published)": {"variant": "keras"},
    "keras, gradient sign, decay": {"variant": "keras", "sign_source": "gradient", "decay": 1e-3},
}


def run_wame(weights: list[torch.Tensor], grads: list[list[torch.Tensor]], **options) -> tuple:
    """``WAME`` (the class, as users build it) on copies of ``weights``, stepped with each of ``grads``."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = WAME(params, **{"lr": 1e-2, **options})
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        optimizer.step()
    state = [optimizer.state[p] for p in params]
    return params, state


def reference_run(
    weights: list[torch.Tensor], grads: list[list[torch.Tensor]], **options
) -> list[list[float]]:
    kw = {"lr": options.get("lr", 1e-2), "maximize": options.get("maximize", False)}
    if options.get("variant") == "keras":
        kw |= {"decay": options.get("decay", 0.0), "sign_source": options.get("sign_source", "weight")}
        refs = [ReferenceKerasWAME(w.double().cpu().tolist(), **kw) for w in weights]
    else:
        kw |= {"weight_decay": options.get("weight_decay", 0.0)}
        kw |= {"decoupled": options.get("decoupled_weight_decay", False)}
        literal = options.get("denominator") == "literal"
        refs = [ReferenceWAME(w.double().cpu().tolist(), literal=literal, **kw) for w in weights]
    for step_grads in grads:
        for ref, g in zip(refs, step_grads):
            ref.step(g.double().cpu().tolist())
    return [ref.weights for ref in refs]


def tolerance_used(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> float:
    """max ``|a - b| / (atol + rtol * |b|)``: at most 1 where ``a`` is within tolerance of ``b``."""
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs() / (atol + rtol * b.abs())).max().item()


def normwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    top = max(y.abs().max().item() for y in b)
    return max((x.double().cpu() - y).abs().max().item() for x, y in zip(a, b)) / top


def stepwise(weights, grads, options) -> float:
    """Tolerance used (see :func:`tolerance_used`) by one fused step against one unfused step started from the
    same state, the worst over all steps (each continuing from the unfused result), weights and state; inf
    when ``prev_sign`` differs."""
    dtype = weights[0].dtype
    group = WAME([torch.nn.Parameter(weights[0].clone())], **{"lr": 1e-2, **options}).param_groups[0]
    hyper = {
        k: group[k] for k in ("lr", "alpha", "eps", "weight_decay", "decoupled_weight_decay", "maximize")
    }
    hyper |= {
        "denominator": group["denominator"],
        "eta_minus": group["etas"][0],
        "eta_plus": group["etas"][1],
    }
    hyper |= {"zeta_min": group["zeta_bounds"][0], "zeta_max": group["zeta_bounds"][1]}
    hyper |= {k: group[k] for k in ("variant", "sign_source", "betas", "decay")}
    initial_z = 1.0 if group["variant"] == "keras" else 0.0
    state = [
        [w.clone() for w in weights],
        [torch.zeros_like(w, dtype=torch.int8) for w in weights],
        [torch.ones_like(w) for w in weights],
        [torch.full_like(w, initial_z) for w in weights],
        [torch.zeros_like(w) for w in weights],
    ]
    worst = 0.0
    for done, step_grads in enumerate(grads):
        a = [[t.clone() for t in ts] for ts in state]
        b = [[t.clone() for t in ts] for ts in state]
        a_steps, b_steps = ([torch.tensor(float(done)) for _ in weights] for _ in range(2))
        wame_functional(a[0], step_grads, *a[1:], a_steps, foreach=False, fused=False, **hyper)
        wame_functional(b[0], step_grads, *b[1:], b_steps, fused=True, **hyper)
        if not all(torch.equal(x, y) for x, y in zip(a[1], b[1])):
            return float("inf")
        used = (tolerance_used(y, x, *TOLERANCE[dtype]) for xs, ys in zip(a, b) for x, y in zip(xs, ys))
        worst = max(worst, *used)
        state = a
    return worst


def check_correctness(report: Report, device: torch.device, sizes: Sizes) -> None:
    report.add(
        f"Each row: {sizes.steps} steps of fixed random gradients (10% zeros) on tensors of "
        f"{', '.join(map(str, sizes.correctness))} elements. *Tolerance used*: max |fused - unfused| / "
        "(atol + rtol |unfused|) over weights and state, pass <= 1; fp32 after all steps (rtol, atol = "
        f"{TOLERANCE[torch.float32]}), bf16 for each step from the same state ({TOLERANCE[torch.bfloat16]}, "
        "2-3 bf16 ulps). *Drift*: max |w - w_ref| / max |w_ref| after all steps against the float64 "
        "transcription of Algorithm 1 fed the same gradients (information: bf16 storage rounds every step).",
        "",
        "| dtype | case | prev_sign | zeta | state dtypes | tolerance used | drift fused | drift unfused "
        "| verdict |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    )
    for dtype in (torch.float32, torch.bfloat16):
        for case, options in CASES.items():
            generator = torch.Generator().manual_seed(0)
            weights = [torch.randn(n, generator=generator).to(device, dtype) for n in sizes.correctness]
            grads = [
                [
                    (torch.randn(n, generator=generator) * (torch.rand(n, generator=generator) > 0.1)).to(
                        device, dtype
                    )
                    for n in sizes.correctness
                ]
                for _ in range(sizes.steps)
            ]
            fused, fused_state = run_wame(weights, grads, fused=True, **options)
            single, single_state = run_wame(weights, grads, foreach=False, fused=False, **options)
            signs = all(
                torch.equal(a["prev_sign"], b["prev_sign"]) for a, b in zip(fused_state, single_state)
            )
            zetas = all(torch.equal(a["zeta"], b["zeta"]) for a, b in zip(fused_state, single_state))
            dtypes = all(
                s["prev_sign"].dtype == torch.int8
                and all(s[k].dtype == dtype for k in ("zeta", "z", "theta"))
                for s in fused_state
            )
            reference = [
                torch.tensor(r, dtype=torch.float64) for r in reference_run(weights, grads, **options)
            ]
            drift = [normwise([p.detach() for p in run], reference) for run in (fused, single)]
            if dtype == torch.float32:
                pairs = [(a.detach(), b.detach()) for a, b in zip(fused, single)]
                pairs += [(a[k], b[k]) for a, b in zip(fused_state, single_state) for k in ("z", "theta")]
                used = max(tolerance_used(a, b, *TOLERANCE[dtype]) for a, b in pairs)
                ok = signs and zetas and dtypes and used <= 1
            else:  # zeta may round differently where bf16 products tie; the stepwise check covers it
                used = stepwise(weights, grads, options)
                ok = signs and dtypes and used <= 1
            verdict = report.check(ok, f"correctness {str(dtype).removeprefix('torch.')} {case}")
            report.add(
                f"| {str(dtype).removeprefix('torch.')} | {case} | {'equal' if signs else 'DIFFER'} "
                f"| {'equal' if zetas else 'differ'} | {'ok' if dtypes else 'WRONG'} | {used:.2f} "
                f"| {drift[0]:.1e} | {drift[1]:.1e} | {verdict} |"
            )


# --- 2. optimizer step ------------------------------------------------------------------------------------


def copy_bandwidth(device: torch.device, nbytes: int, rounds: int) -> float:
    """Bytes read + written per second by ``dst.copy_(src)``: the ceiling of an elementwise kernel."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times)


def make_params(total: int, pieces: int, device: torch.device) -> list[torch.nn.Parameter]:
    sizes = [total // pieces + (i < total % pieces) for i in range(pieces)]
    params = []
    for size in sizes:
        p = torch.nn.Parameter(torch.randn(size, device=device))
        p.grad = torch.randn(size, device=device)
        params.append(p)
    return params


def time_steps(
    steps: dict[str, Callable[[], object]], device, rounds: int, per_round: int
) -> dict[str, list]:
    """Seconds per step of each candidate, interleaved: ``per_round`` steps of each, in turn, per round."""
    for step in steps.values():
        step()  # warm-up: state allocation, kernel compilation
    sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            sync(device)
            seconds[name].append((time.perf_counter() - start) / per_round)
    return seconds


def check_step_speed(report: Report, device: torch.device, sizes: Sizes) -> None:
    bandwidth = copy_bandwidth(device, sizes.copy_bytes, sizes.step_rounds)
    report.add(f"Copy bandwidth (`copy_`, read + write): **{bandwidth / 1e9:.0f} GB/s**")
    for total in sizes.step_params:
        for pieces in (1, 200):
            params = make_params(total, pieces, device)
            layout = "one tensor" if pieces == 1 else f"{pieces} tensors"
            optimizers = {
                "torch Adam fused": torch.optim.Adam(params, lr=1e-3, fused=True),
                "torch Adam foreach": torch.optim.Adam(params, lr=1e-3, foreach=True),
                "WAME fused": WAME(params, lr=1e-3, fused=True),
                "WAME foreach": WAME(params, lr=1e-3, foreach=True),
            }
            seconds = time_steps({k: o.step for k, o in optimizers.items()}, device, sizes.step_rounds,
                                 sizes.steps_per_round)  # fmt: skip
            anchor = seconds["torch Adam fused"]
            report.add(
                "",
                f"*{total / 1e6:.0f}M fp32 parameters as {layout}, "
                f"{sizes.step_rounds} interleaved rounds of {sizes.steps_per_round} steps*",
                "",
                "| candidate | ms/step | GB/s | % of copy bandwidth | x torch Adam fused |",
                "|---|---:|---:|---:|---:|",
            )
            for name, times in seconds.items():
                median = statistics.median(times)
                rate = BYTES_PER_PARAM["WAME" if name.startswith("WAME") else "Adam"] * total / median
                ratio = statistics.median(t / a for t, a in zip(times, anchor))
                report.add(
                    f"| {name} | {median * 1e3:.3f} | {rate / 1e9:.0f} | {100 * rate / bandwidth:.0f}% "
                    f"| {ratio:.2f} |"
                )
            fused = seconds["WAME fused"]
            ratio = statistics.median(t / a for t, a in zip(fused, anchor))
            share = BYTES_PER_PARAM["WAME"] * total / statistics.median(fused) / bandwidth
            targets = [f"<= 1.4x fused Adam: {'met' if ratio <= 1.4 else 'missed'} ({ratio:.2f}x)"]
            if pieces == 1 and total == max(sizes.step_params):
                targets.append(
                    f">= 70% of copy bandwidth: {'met' if share >= 0.7 else 'missed'} ({share:.0%})"
                )
            report.add("", "Targets: " + "; ".join(targets))
            del params, optimizers
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()


# --- 3. training ------------------------------------------------------------------------------------------


def write_cifar10(root: Path, n_train: int, n_test: int) -> dict[str, str]:
    """CIFAR-10's python pickle batches (5 training batches, test_batch, batches.meta) in ``root``, holding
    random images whose mean depends on the label; returns each file's md5 (torchvision checks them)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    means = rng.integers(64, 192, size=(10, 3072))

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, size=n)
        noise = rng.integers(-64, 64, size=(n, 3072))
        data = np.clip(means[labels] + noise, 0, 255).astype(np.uint8)
        return {"data": data, "labels": labels.tolist(), "filenames": [f"{i}.png" for i in range(n)]}

    per_batch = n_train // 5
    files = {f"data_batch_{i + 1}": batch(per_batch) for i in range(5)}
    files["test_batch"] = batch(n_test)
    files["batches.meta"] = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    md5 = {}
    for name, content in files.items():
        payload = pickle.dumps(content, protocol=2)
        (folder / name).write_bytes(payload)
        md5[name] = hashlib.md5(payload).hexdigest()
    return md5


def accept_checksums(md5: dict[str, str]) -> None:
    """Lets torchvision's CIFAR10 accept the generated files (it checks the official files' md5)."""
    from torchvision.datasets import CIFAR10

    CIFAR10.train_list = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    CIFAR10.test_list = [["test_batch", md5["test_batch"]]]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5["batches.meta"]}


def train_row(report: Report, device: torch.device, sizes: Sizes, data: Path, stage: int, work: Path) -> None:
    from train import main as train_main  # launch/train.py, in this process (one rank)

    config = json.loads((ROOT / "configs" / "zero2.json").read_text())
    config["zero_optimization"] = {"stage": stage}
    config_file = work / f"zero{stage}.json"
    config_file.write_text(json.dumps(config))
    out = work / f"run-zero{stage}"
    argv = [
        "--deepspeed_config", str(config_file), "--dataset", "cifar10", "--data-dir", str(data),
        "--model", "table1b", "--width", str(sizes.width), "--optimizer", "wame", "--lr", "1e-3",
        "--batch-size", "128", "--epochs", "3", "--precision", sizes.precision, "--out-dir", str(out),
        "--checkpoint-every", "0", *(["--compile"] if sizes.compile else []),
    ]  # fmt: skip
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    status = train_main(argv)
    if status != 0:
        raise RuntimeError(f"launch/train.py {' '.join(argv)} exited {status}")
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [e["wall_s"] for e in epochs[1:]]
    per_epoch = statistics.mean(timed)
    steps = sizes.train_images // 128
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    projected = 100 * per_epoch / 60
    losses = [e["train_loss"] for e in epochs]
    falls = report.check(losses[-1] < losses[0], f"training loss falls (stage {stage})")
    report.add(
        f"| {'DeepSpeed, no ZeRO' if stage == 0 else f'ZeRO-{stage}'}, 1 rank | {epochs[0]['wall_s']:.1f} "
        f"| {per_epoch:.2f} | {steps * 128 / per_epoch:,.0f} | {peak:,.0f} | {projected:.1f} "
        f"| {losses[0]:.3f} -> {losses[-1]:.3f} ({falls}) | {100 * epochs[-1]['test_acc']:.1f}% |"
    )


def check_training(report: Report, device: torch.device, sizes: Sizes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        accept_checksums(write_cifar10(work / "data", sizes.train_images, sizes.test_images))
        report.add(
            f"CIFAR-10-shaped data: {sizes.train_images:,} training and {sizes.test_images:,} test images, "
            f"Table 1b at width {sizes.width}, global batch 128, precision {sizes.precision}, "
            f"compile: {sizes.compile}.",
            "",
            "| engine | epoch 1 s (compile) | s/epoch (2, 3) | samples/s | GPU peak MiB | 100 epochs, min "
            "| training loss | test acc |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        )
        for stage in (0, 2):
            train_row(report, device, sizes, work / "data", stage, work)
    report.add(
        "", f"Target: the paper's 100 epochs (its 2017 GPU: {PAPER_MINUTES_100_EPOCHS} min) in under 3 min."
    )


# --- 4. Lightning -----------------------------------------------------------------------------------------


def lightning_worker() -> None:
    """A stock Lightning Trainer, DeepSpeed ZeRO-2, WAME from ``configure_optimizers``; prints a JSON line."""
    import lightning as L
    from lightning.pytorch.strategies import DeepSpeedStrategy

    torch.manual_seed(0)
    x = torch.randn(2048, 32)
    y = (x[:, :4].sum(dim=1) > 0).long()

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
            self.losses: list[float] = []

        def training_step(self, batch, _):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return WAME(self.parameters(), lr=1e-3)

    module = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    trainer = L.Trainer(
        accelerator="gpu", devices=1, strategy=DeepSpeedStrategy(stage=2), precision="bf16-mixed",
        max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(module, loader)
    inner = trainer.strategy.deepspeed_engine.optimizer
    chain = []
    while inner is not None and len(chain) < 6:
        chain.append(type(inner).__name__)
        inner = getattr(inner, "optimizer", None)
    wame = trainer.strategy.deepspeed_engine.optimizer.optimizer
    steps = {int(s["step"]) for s in wame.state.values() if "step" in s}
    print(json.dumps({"chain": chain, "wame_steps": sorted(steps), "global_step": trainer.global_step,
                      "first_loss": statistics.mean(module.losses[:5]),
                      "last_loss": statistics.mean(module.losses[-5:])}))  # fmt: skip


def check_lightning(report: Report, device: torch.device) -> None:
    if device.type != "cuda":
        report.add("Skipped on the CPU: stock Lightning's DeepSpeed strategy runs on CUDA only.")
        return
    proc = subprocess.run(
        [sys.executable, __file__, "--lightning-worker"], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"Lightning worker exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    is_wame = "WAME" in found["chain"]
    steps_ok = found["wame_steps"] == [found["global_step"]]
    falls = found["last_loss"] < found["first_loss"]
    report.add(
        f"Optimizer chain: {' -> '.join(found['chain'])} ({report.check(is_wame, 'Lightning steps WAME')}); "
        f"WAME steps {found['wame_steps']} vs trainer steps {found['global_step']} "
        f"({report.check(steps_ok, 'Lightning step count')}); loss {found['first_loss']:.3f} -> "
        f"{found['last_loss']:.3f} ({report.check(falls, 'Lightning loss falls')})"
    )


# --- the report -------------------------------------------------------------------------------------------


def versions() -> str:
    import deepspeed
    import triton

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"deepspeed {deepspeed.__version__}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (what CI runs)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--lightning-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lightning_worker:
        lightning_worker()
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; run with --dry-run for the CPU smoke test", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = DRY if args.dry_run else GPU
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    report = Report()
    report.add(
        f"# WAME GPU check{' (dry run)' if args.dry_run else ''}: {name}, {time.strftime('%Y-%m-%d')}",
        "",
        versions(),
    )
    with report.section(f"1. Correctness: fused vs the single-tensor rule, {sizes.steps} steps"):
        check_correctness(report, device, sizes)
    with report.section("2. Optimizer step"):
        check_step_speed(report, device, sizes)
    with report.section("3. Training: launch/train.py, Table 1b on CIFAR-10-shaped data"):
        check_training(report, device, sizes)
    with report.section("4. Stock Lightning, DeepSpeed ZeRO-2, WAME from configure_optimizers"):
        check_lightning(report, device)
    report.add("", f"Failed checks: {', '.join(report.failures) if report.failures else 'none'}")
    if args.out:
        atomic.write_text(args.out, "\n".join(report.lines) + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
