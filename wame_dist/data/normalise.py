"""Per-channel standardisation of uint8 image tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalise(
    images: torch.Tensor, scale: float, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Returns float32 ``(images / scale - mean) / std`` for NCHW ``images``, one mean and std per channel.

    Works in place on the float32 copy, so a whole CIFAR training set needs one float copy, not three.
    """
    shape = (1, len(mean), 1, 1)
    out = images.to(torch.float32, copy=True)
    out.div_(scale).sub_(torch.tensor(mean, dtype=torch.float32).view(shape))
    return out.div_(torch.tensor(std, dtype=torch.float32).view(shape))
