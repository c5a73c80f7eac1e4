"""MNIST from torchvision's on-disk layout: 50k train / 10k validation / 10k test."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets

from wame_dist.data.files import open_standard_files
from wame_dist.data.normalise import normalise
from wame_dist.data.splits import Splits

#: The usual MNIST constants: mean and standard deviation of the 60k training pixels scaled to [0, 1].
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

#: The files torchvision's ``MNIST`` reads, uncompressed, from ``<data_dir>/MNIST/raw``.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: The validation split is the last ``1 / VALIDATION_DIVISOR`` of the official training set, in file
#: order: images 50,000-59,999 of 60,000, the classic split of ``mnist.pkl.gz`` (Theano/Keras era).
VALIDATION_DIVISOR = 6


def load_mnist(data_dir: Path, *, download: bool) -> Splits:
    """Reads MNIST with torchvision and splits it 50k / 10k / 10k (validation: the last sixth of train).

    The split is a fraction so that tiny test files split the same way: with ``n`` training images the
    last ``n // 6`` are the validation set. Pixels are scaled to [0, 1] and standardised with
    :data:`MNIST_MEAN` / :data:`MNIST_STD`.
    """
    train_set, test_set = open_standard_files(
        "MNIST",
        data_dir / "MNIST" / "raw",
        MNIST_FILES,
        "the four IDX files from the MNIST site, gunzipped",
        download=download,
        open_=lambda: (
            datasets.MNIST(data_dir, train=True, download=download),
            datasets.MNIST(data_dir, train=False, download=download),
        ),
    )
    images = normalise(train_set.data.unsqueeze(1), 255.0, MNIST_MEAN, MNIST_STD)
    labels = train_set.targets.to(torch.int64)
    n_train = len(images) - len(images) // VALIDATION_DIVISOR
    test_images = normalise(test_set.data.unsqueeze(1), 255.0, MNIST_MEAN, MNIST_STD)
    return Splits(
        name="mnist",
        train=(images[:n_train], labels[:n_train]),
        validation=(images[n_train:], labels[n_train:]),
        test=(test_images, test_set.targets.to(torch.int64)),
        num_classes=10,
        in_channels=1,
        image_size=images.shape[-1],
    )
