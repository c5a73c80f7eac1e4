"""``load_splits``: one data set by name, as in-memory tensors."""

from __future__ import annotations

from pathlib import Path

from wame_dist.data.cifar import load_cifar
from wame_dist.data.digits import load_digits_splits
from wame_dist.data.mnist import load_mnist
from wame_dist.data.splits import Splits

#: Where the MNIST / CIFAR files are looked for when no ``data_dir`` is given (relative to the cwd).
DEFAULT_DATA_DIR = Path("data")
DATASETS = ("digits", "mnist", "cifar10", "cifar100")


def load_splits(name: str, data_dir: str | Path | None = None, *, download: bool = False) -> Splits:
    """Loads data set ``name`` (one of :data:`DATASETS`) into memory, split into train / validation / test.

    ``digits`` is scikit-learn's bundled copy and ignores ``data_dir`` and ``download``. The others are
    read with torchvision from ``data_dir`` (default :data:`DEFAULT_DATA_DIR`); ``download=True`` lets
    torchvision fetch missing files. Missing files otherwise raise
    :class:`~wame_dist.data.files.DataNotFound` (a ``FileNotFoundError`` and a
    :class:`~wame_dist.errors.BadInput`) that names them and the folder they belong in.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_splits()
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if name == "mnist":
        return load_mnist(root, download=download)
    return load_cifar(name, root, download=download)
