"""Dropout whose masks depend on the sample, not on the rank: the same run on any number of ranks.

``nn.Dropout`` draws its mask from the device's generator, so a sample's mask depends on which rank
holds it and where in that rank's batch it sits: the same global batch gets other masks on another world
size. :class:`SampleDropout` instead keeps element ``e`` of sample ``i`` in epoch ``t`` of a run with
seed ``s`` when

    lowbias32(key(s, t, layer, i) + lowbias32(e)) >= p * 2**32

where ``key`` chains lowbias32 over the 32-bit words of ``(s, layer, t, i)`` and ``i`` is the sample's
index in the training set. The hash (Chris Wellons' ``lowbias32``, bias 0.17 of the ideal) runs in int64
tensor arithmetic kept below 2**63, so CPU and CUDA give the same bits. Kept elements are scaled by
``1 / (1 - p)`` as ``nn.Dropout`` does.

The training loop calls :func:`set_samples` before each forward pass; a module with no keys (an eval
pass, or a model used outside the loop) behaves exactly as ``nn.Dropout``.
"""

from __future__ import annotations

import torch
from torch import nn

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for ``x`` in [0, 2**32) without int64 overflow (16-bit halves of ``c``)."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash of 32-bit values held in an int64 tensor."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _chain(key: torch.Tensor, value: int | torch.Tensor) -> torch.Tensor:
    """Folds a 64-bit ``value`` into a 32-bit ``key`` (one hash per 32-bit word)."""
    for word in ((value & _MASK32), (value >> 32) & _MASK32):
        key = lowbias32((key + word) & _MASK32)
    return key


def sample_keys(seed: int, layer: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """The 32-bit key of each sample (``indices``: positions in the training set) for one layer/epoch."""
    key = torch.zeros((), dtype=torch.int64, device=indices.device)
    for part in (seed, layer, epoch):
        key = _chain(key, part)
    return _chain(key, indices.to(torch.int64))


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
        bits = lowbias32((self.keys[:, None] + self._elements[None, :]) & _MASK32)
        keep = (bits >= int(self.p * 2**32)).reshape(x.shape)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def set_samples(model: nn.Module, seed: int, epoch: int, indices: torch.Tensor | None) -> None:
    """Keys every :class:`SampleDropout` of ``model`` by the samples of the next batch (training-set
    positions, in batch order); ``None`` unkeys them."""
    for module in model.modules():
        if isinstance(module, SampleDropout):
            module.set_keys(seed, epoch, indices)
