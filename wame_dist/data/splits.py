"""The train / validation / test splits of one data set, held in memory as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)
class Splits:
    """Images (float32, NCHW, normalised) and labels (int64) of the three splits of a data set.

    ``validation`` and ``test`` may be the very same tensors (CIFAR, where the paper validates on the
    test set); :meth:`to` keeps such sharing, so a device holds them once.
    """

    name: str
    train: Pair
    validation: Pair
    test: Pair
    num_classes: int
    in_channels: int
    image_size: int

    def to(self, device: torch.device | str) -> Splits:
        """Returns a copy whose tensors live on ``device``; a tensor shared between splits is moved once."""
        moved: dict[int, torch.Tensor] = {}

        def move_one(tensor: torch.Tensor) -> torch.Tensor:
            if id(tensor) not in moved:
                moved[id(tensor)] = tensor.to(device)
            return moved[id(tensor)]

        def move(pair: Pair) -> Pair:
            return move_one(pair[0]), move_one(pair[1])

        return Splits(
            name=self.name,
            train=move(self.train),
            validation=move(self.validation),
            test=move(self.test),
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            image_size=self.image_size,
        )
