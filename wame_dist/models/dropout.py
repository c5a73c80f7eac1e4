"""Dropout whose masks depend on the sample, not on the rank: the same run on any number of ranks.

``nn.Dropout`` draws its mask from the device's generator, so a sample's mask depends on which rank
holds it and where in that rank's batch it sits: the same global batch gets other masks on another world
size. :class:`SampleDropout` instead keeps element ``e`` of sample ``i`` in epoch ``t`` of a run with
seed ``s`` when

    lowbias32(key(s, t, layer, i) + lowbias32(e)) >= p * 2**32

where ``key`` chains lowbias32 over the 32-bit words of ``(s, layer, t, i)`` and ``i`` is the sample's
index in the training set. The hash is :func:`wame_dist.hashing.lowbias32`: the same bits on CPU and
CUDA. Kept elements are scaled by ``1 / (1 - p)`` as ``nn.Dropout`` does.

The training loop calls :func:`set_samples` before each forward pass; a module with no keys (an eval
pass, or a model used outside the loop) behaves exactly as ``nn.Dropout``.
"""

from __future__ import annotations

import torch
from torch import nn

from wame_dist.hashing import MASK32, chain, key_of, lowbias32


def sample_keys(seed: int, layer: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """The 32-bit key of each sample (``indices``: positions in the training set) for one layer/epoch."""
    return chain(key_of(seed, layer, epoch), indices.to(torch.int64))


class SampleDropout(nn.Dropout):
    """``nn.Dropout(p)`` whose mask is keyed by ``(seed, epoch, sample index, layer, element)``.

    ``layer`` tells the dropout layers of one network apart. See the module docstring for the rule.
    """

    def __init__(self, p: float = 0.5, *, layer: int = 0) -> None:
        super().__init__(p)
        self.layer = layer
        self.keys: torch.Tensor | None = None
        self._elements: torch.Tensor | None = None  # lowbias32 of the element positions, kept per shape

    def set_keys(self, seed: int, epoch: int, indices: torch.Tensor | None) -> None:
        """Keys the next passes by these samples (``None``: back to ``nn.Dropout``'s own generator)."""
        self.keys = None if indices is None else sample_keys(seed, self.layer, epoch, indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.keys is None:
            return super().forward(x)
        if len(self.keys) != len(x):
            raise RuntimeError(
                f"SampleDropout was keyed for {len(self.keys)} samples but got a batch of {len(x)}; "
                "call set_samples with this batch's indices before the forward pass"
            )
        if self.p == 1.0:
            return torch.zeros_like(x)
        per_sample = x[0].numel()
        if self._elements is None or len(self._elements) != per_sample or self._elements.device != x.device:
            self._elements = lowbias32(torch.arange(per_sample, dtype=torch.int64, device=x.device))
        bits = lowbias32((self.keys[:, None] + self._elements[None, :]) & MASK32)
        keep = (bits >= int(self.p * 2**32)).reshape(x.shape)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def set_samples(model: nn.Module, seed: int, epoch: int, indices: torch.Tensor | None) -> None:
    """Keys every :class:`SampleDropout` of ``model`` by the samples of the next batch (training-set
    positions, in batch order); ``None`` unkeys them."""
    for module in model.modules():
        if isinstance(module, SampleDropout):
            module.set_keys(seed, epoch, indices)
