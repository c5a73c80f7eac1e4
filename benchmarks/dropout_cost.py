"""What world-size independent dropout costs: a training step with SampleDropout keyed per sample against
the same step with ``nn.Dropout``'s generator, for the paper's two networks.

    python benchmarks/dropout_cost.py [--batch 64] [--rounds 15] [--steps 5] [--device cpu|cuda]

A step is what the training loop does per batch: key the dropout layers by the batch's sample indices
(:func:`wame_dist.models.set_samples`; the anchor unkeys them, so they draw from the generator), forward,
cross-entropy, backward, one WAME step. The two variants are interleaved round by round on the same model
and batch. On a busy or small machine the step ratio is noisy (a few percent either way), so the benchmark
also times the masking alone: every dropout layer's forward on a tensor of its input's shape, keyed and
unkeyed, interleaved; the extra time of the keyed masks over the median generator step is the figure that
counts (the issue's target: below 3% of step time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wame_dist import WAME
from wame_dist.models import SampleDropout, build_model, set_samples

#: (network, input shape, classes): Table 1a on MNIST, Table 1b on CIFAR-100
NETWORKS = (("table1a", (1, 28, 28), 10), ("table1b", (3, 32, 32), 100))


def step_time(model, optimizer, x, y, indices, keyed: bool, steps: int, device: torch.device) -> float:
    """Seconds per training step, over ``steps`` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for epoch in range(steps):
        set_samples(model, 0, epoch, indices if keyed else None)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def masking_time(model, x, indices, keyed: bool, repeats: int) -> float:
    """Seconds that every dropout layer of ``model`` spends masking one batch (forward only), keyed by the
    batch's samples or from the generator."""
    inputs = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: inputs.append((module, args[0].detach())))
        for m in model.modules()
        if isinstance(m, SampleDropout)
    ]
    set_samples(model, 0, 0, indices)
    model(x)
    for hook in hooks:
        hook.remove()
    set_samples(model, 0, 0, indices if keyed else None)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        for module, tensor in inputs:
            module(tensor)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="samples per step (one rank's micro batch)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="steps per variant and round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    for network, shape, classes in NETWORKS:
        model = build_model(network, num_classes=classes, in_channels=shape[0], image_size=shape[1])
        model = model.to(device).train()
        optimizer = WAME(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, *shape, generator=generator).to(device)
        y = torch.randint(classes, (args.batch,), generator=generator).to(device)
        indices = torch.randperm(50_000, generator=generator)[: args.batch].to(device)
        for keyed in (True, False):  # warm-up: kernels, caches, the element hashes
            step_time(model, optimizer, x, y, indices, keyed, 2, device)
        ratios, keyed_s, plain_s = [], [], []
        for _ in range(args.rounds):
            keyed_s.append(step_time(model, optimizer, x, y, indices, True, args.steps, device))
            plain_s.append(step_time(model, optimizer, x, y, indices, False, args.steps, device))
            ratios.append(keyed_s[-1] / plain_s[-1])
        masks_keyed, masks_plain = [], []
        for _ in range(args.rounds):
            masks_keyed.append(masking_time(model, x, indices, True, 20))
            masks_plain.append(masking_time(model, x, indices, False, 20))
        extra = statistics.median(masks_keyed) - statistics.median(masks_plain)
        print(
            f"{network}: masking {1e3 * statistics.median(masks_keyed):.3f} ms keyed, "
            f"{1e3 * statistics.median(masks_plain):.3f} ms generator: {1e3 * extra:+.3f} ms = "
            f"{100 * extra / statistics.median(plain_s):+.2f}% of the step"
        )
        print(
            f"{network}: SampleDropout {1e3 * statistics.median(keyed_s):.2f} ms/step, nn.Dropout "
            f"{1e3 * statistics.median(plain_s):.2f} ms/step, ratio {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
