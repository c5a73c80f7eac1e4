"""Mini-batches cut on the device from tensors that already live there, in a sampler's order."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class DeviceBatches:
    """Iterates ``(images[idx], labels[idx])`` batches, ``idx`` being consecutive runs of sampler indices.

    The data never leaves its device: each epoch the sampler's indices (e.g. this rank's shard from a
    ``DistributedSampler(labels, num_replicas=world, rank=rank, shuffle=True, seed=seed)``; a sampler
    only needs the length of its data set, so the labels tensor serves) are copied to the device once
    and every batch is gathered there by indexing. The same code runs on CPU. ``drop_last`` drops a
    last batch smaller than ``batch_size``. With ``with_indices`` each batch also carries ``idx``, the
    samples' positions in the data set (what keys their dropout masks, independently of the rank).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        sampler: Sampler[int],
        *,
        drop_last: bool = False,
        channels_last: bool = False,
        with_indices: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if images.device != labels.device:
            raise ValueError(f"images on {images.device} but labels on {labels.device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        # channels_last: store NCHW images in NHWC memory order (faster convolutions on recent GPUs);
        # indexing along the batch dimension keeps that layout, so every batch comes out channels-last.
        self.images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        self.labels = labels
        self.batch_size = batch_size
        self.sampler = sampler
        self.drop_last = drop_last
        self.with_indices = with_indices

    def set_epoch(self, epoch: int) -> None:
        """Forwards to the sampler's ``set_epoch``, so that each epoch gets its own shuffle."""
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        """The number of batches one epoch yields."""
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64).to(self.images.device)
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = (self.images[idx], self.labels[idx])
            yield (*batch, idx) if self.with_indices else batch
