"""Times one optimizer ``step()`` of each WAME implementation against the anchors, on CPU.

    python benchmarks/optimizer_step.py [--params 20000000] [--rounds 15] [--threads N] [--no-8bit]

Anchors: torch's Adam (foreach and fused) and DeepSpeed's ``DeepSpeedCPUAdam`` (the optimizer ZeRO-Offload
runs). All candidates update the same N fp32 parameters, once as one tensor and once as 200 tensors.
The machine is shared and noisy, so candidates are interleaved round by round in one process and the
figure that counts is the median over rounds of each candidate's time divided by the anchor's time in
the same round. Also printed: median ms/step, Mparam/s, the effective memory bandwidth (bytes the
rule must move per parameter: WAME 38, WAME with bfloat16 state 26, with 8-bit state 19, Adam 28), and the
optimizer's state bytes per parameter. The 8-bit state runs as torch ops around the step (no kernel reads
it yet), so its row shows what that path costs, not what its bytes allow; its seconds-long steps also slow
the DeepSpeedCPUAdam step that follows (measured 13 -> 24 ms; torch's fused Adam is not affected), so read
that row against torch's fused Adam, and take the other rows from a run with ``--no-8bit``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from wame_dist import WAME

#: Bytes read + written per fp32 parameter by one step: WAME reads w, g, zeta, z, theta (4 B each) and
#: prev_sign (1 B) and writes all but g; with bfloat16 state zeta, z, theta take 2 B each; with 8-bit state
#: the state is 3.27 B, read and written (19 B in all); Adam reads w, g, m, v and writes w, m, v.
BYTES_PER_PARAM = {"WAME": 38, "WAME bf16 state": 26, "WAME 8-bit state": 19, "Adam": 28}


def make_params(total: int, pieces: int) -> list[torch.nn.Parameter]:
    """``pieces`` fp32 parameters of ``total`` elements together, each with a random gradient."""
    generator = torch.Generator().manual_seed(0)
    sizes = [total // pieces + (i < total % pieces) for i in range(pieces)]
    params = []
    for size in sizes:
        p = torch.nn.Parameter(torch.randn(size, generator=generator))
        p.grad = torch.randn(size, generator=generator)
        params.append(p)
    return params


def candidates(params: list[torch.nn.Parameter], eight_bit: bool) -> dict[str, torch.optim.Optimizer]:
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    optimizers = {
        "DeepSpeedCPUAdam": DeepSpeedCPUAdam(params, lr=1e-3),
        "torch Adam foreach": torch.optim.Adam(params, lr=1e-3, foreach=True),
        "torch Adam fused": torch.optim.Adam(params, lr=1e-3, fused=True),
        "WAME single-tensor": WAME(params, lr=1e-3, foreach=False, fused=False),
        "WAME foreach": WAME(params, lr=1e-3, foreach=True),
        "WAME fused": WAME(params, lr=1e-3, fused=True),
        "WAME fused, bf16 state": WAME(params, lr=1e-3, fused=True, state_dtype="bf16"),
    }
    if eight_bit:
        optimizers["WAME fused, 8-bit state"] = WAME(params, lr=1e-3, fused=True, state_dtype="8bit")
    return optimizers


def bytes_per_param(name: str) -> int:
    """What one step of candidate ``name`` must move per parameter (:data:`BYTES_PER_PARAM`)."""
    if not name.startswith("WAME"):
        return BYTES_PER_PARAM["Adam"]
    for state in ("bf16 state", "8-bit state"):
        if state in name:
            return BYTES_PER_PARAM[f"WAME {state}"]
    return BYTES_PER_PARAM["WAME"]


def state_bytes_per_param(optimizer: torch.optim.Optimizer, n_params: int) -> float:
    total = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return total / n_params


def time_rounds(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each step function, interleaved: one call of each per round."""
    for step in steps.values():  # warm-up: state allocation, kernel build, first-touch page faults
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def report(layout: str, n_params: int, optimizers: dict[str, torch.optim.Optimizer], rounds: int) -> None:
    seconds = time_rounds({name: opt.step for name, opt in optimizers.items()}, rounds)
    anchors = {
        "ds": seconds["DeepSpeedCPUAdam"],
        "fused": seconds["torch Adam fused"],
        "foreach": seconds["torch Adam foreach"],
    }
    print(f"\n{layout}: {n_params / 1e6:.0f}M fp32 parameters, {rounds} interleaved rounds")
    print(
        "| candidate | ms/step | Mparam/s | GB/s | x DeepSpeedCPUAdam | x Adam fused | x Adam foreach "
        "| state B/param |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, times in seconds.items():
        median = statistics.median(times)
        moved = bytes_per_param(name) * n_params
        ratio = {k: statistics.median(t / a for t, a in zip(times, anchor)) for k, anchor in anchors.items()}
        state_bytes = state_bytes_per_param(optimizers[name], n_params)
        print(
            f"| {name} | {median * 1e3:.1f} | {n_params / median / 1e6:.0f} | {moved / median / 1e9:.1f} "
            f"| {ratio['ds']:.2f} | {ratio['fused']:.2f} | {ratio['foreach']:.2f} | {state_bytes:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=20_000_000, help="parameters in all (default 20M)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-8bit", action="store_true", help="leave out the 8-bit state row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for pieces in (1, 200):
        params = make_params(args.params, pieces)
        layout = "one tensor" if pieces == 1 else f"{pieces} tensors"
        report(layout, args.params, candidates(params, not args.no_8bit), args.rounds)
        del params


if __name__ == "__main__":
    main()
