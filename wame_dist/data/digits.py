"""scikit-learn's bundled handwritten digits, upsampled to 28x28: the offline stand-in for MNIST."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from wame_dist.data.splits import Splits

#: Seed of the fixed permutation that splits the 1,797 images; independent of any training seed.
SPLIT_SEED = 20170426
#: Fractions of the images in the validation and in the test split (train gets the rest: 60%).
VALIDATION_FRACTION = 0.2
TEST_FRACTION = 0.2
IMAGE_SIZE = 28


def split_indices(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, validation and test indices of ``n`` images: a fixed permutation (:data:`SPLIT_SEED`) cut
    into 60 / 20 / 20 % (validation and test rounded, train the rest)."""
    n_val, n_test = round(VALIDATION_FRACTION * n), round(TEST_FRACTION * n)
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(n))
    train, validation, test = order.split([n - n_val - n_test, n_val, n_test])
    return train, validation, test


def load_digits_splits() -> Splits:
    """The 1,797 8x8 digits (values 0..16) upsampled to 28x28 and split 60 / 20 / 20 (1079 / 359 / 359).

    Upsampling is bilinear (``F.interpolate(..., mode="bilinear", align_corners=False)``), so the
    Table 1a network sees MNIST-sized inputs. The split is :func:`split_indices`, independent of any
    training seed. Pixels are standardised with the mean and (population) standard deviation of the
    upsampled training split.
    """
    bunch = load_digits()
    small = torch.from_numpy(bunch.images).to(torch.float32).unsqueeze(1)
    images = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    train_idx, val_idx, test_idx = split_indices(len(images))

    mean, std = images[train_idx].mean(), images[train_idx].std(correction=0)
    images = (images - mean) / std
    return Splits(
        name="digits",
        train=(images[train_idx], labels[train_idx]),
        validation=(images[val_idx], labels[val_idx]),
        test=(images[test_idx], labels[test_idx]),
        num_classes=10,
        in_channels=1,
        image_size=IMAGE_SIZE,
    )
