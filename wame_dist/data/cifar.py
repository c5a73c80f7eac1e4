"""CIFAR-10 and CIFAR-100 from torchvision's on-disk layout; the test set doubles as validation set."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torchvision import datasets

from wame_dist.data.files import open_standard_files
from wame_dist.data.normalise import normalise
from wame_dist.data.splits import Splits

#: Per-channel (R, G, B) mean and standard deviation of the 50k training pixels scaled to [0, 1]
#: (the standard deviation over all pixels, not the mean of per-image deviations).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class _CifarSet(NamedTuple):
    """What tells CIFAR-10 and CIFAR-100 apart."""

    title: str
    cls: type[datasets.CIFAR10]
    folder: str  # under data_dir
    files: tuple[str, ...]  # in folder
    archive: str  # the download that unpacks into folder
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_SETS = {
    "cifar10": _CifarSet(
        "CIFAR-10",
        datasets.CIFAR10,
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        "cifar-10-python.tar.gz",
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": _CifarSet(
        "CIFAR-100",
        datasets.CIFAR100,
        "cifar-100-python",
        ("train", "test", "meta"),
        "cifar-100-python.tar.gz",
        100,
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}


def load_cifar(name: str, data_dir: Path, *, download: bool) -> Splits:
    """Reads CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) with torchvision.

    Train is the official training set; validation and test are both the official test set (the same
    tensors), as in the paper. Pixels are scaled to [0, 1] and standardised per channel. No augmentation.
    """
    spec = _SETS[name]
    train_set, test_set = open_standard_files(
        spec.title,
        data_dir / spec.folder,
        spec.files,
        f"extract {spec.archive} in {data_dir.resolve()}",
        download=download,
        open_=lambda: (
            spec.cls(data_dir, train=True, download=download),
            spec.cls(data_dir, train=False, download=download),
        ),
    )

    def tensors(dataset: datasets.CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        nchw = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return normalise(nchw, 255.0, spec.mean, spec.std), torch.tensor(dataset.targets, dtype=torch.int64)

    test = tensors(test_set)
    return Splits(
        name=name,
        train=tensors(train_set),
        validation=test,
        test=test,
        num_classes=spec.num_classes,
        in_channels=3,
        image_size=32,
    )
