"""wame_dist.data: the real MNIST / CIFAR readers on tiny files in the real formats, digits, DeviceBatches."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, SequentialSampler
from torchvision import datasets

from wame_dist.data import DeviceBatches, Splits, load_splits
from wame_dist.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from wame_dist.data.digits import split_indices
from wame_dist.data.mnist import MNIST_MEAN, MNIST_STD

# --- MNIST: IDX files, uncompressed, in <root>/MNIST/raw (torchvision 0.29 reads them as they are) ---


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file: magic 0x0000 08 <ndim> (unsigned bytes), big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(root: Path, n_train: int = 12, n_test: int = 3) -> None:
    """Image i of each file is filled with the value 10 * i, and has label i % 10."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(10 * np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_reads_idx_files_and_holds_out_the_last_sixth(tmp_path: Path) -> None:
    write_tiny_mnist(tmp_path)
    splits = load_splits("mnist", tmp_path)

    assert (splits.name, splits.num_classes, splits.in_channels, splits.image_size) == ("mnist", 10, 1, 28)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits.train, splits.validation, splits.test
    assert (
        train_x.shape == (10, 1, 28, 28) and val_x.shape == (2, 1, 28, 28) and test_x.shape == (3, 1, 28, 28)
    )
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert train_y.tolist() == list(range(10)) and val_y.tolist() == [0, 1] and test_y.tolist() == [0, 1, 2]

    def expected(value: int) -> float:
        return (value / 255 - MNIST_MEAN[0]) / MNIST_STD[0]

    assert torch.allclose(val_x[1], torch.full((1, 28, 28), expected(110)))  # image 11 of the train file
    assert torch.allclose(test_x[2], torch.full((1, 28, 28), expected(20)))
    assert torch.allclose(train_x[:, 0, 0, 0], torch.tensor([expected(10 * i) for i in range(10)]))


# --- CIFAR: python pickle batches; torchvision checks their md5, so the tests register the tiny files' ---


def write_pickle(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_images(n: int, offset: int) -> np.ndarray:
    """Rows of 3072 bytes (R plane, G plane, B plane, each 32x32 row-major): channel c of image i is
    filled with 40 * c + offset + i, and pixel (row 0, column 1) of the red plane is 255."""
    rows = np.empty((n, 3, 32 * 32), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            rows[i, c] = 40 * c + offset + i
    rows[:, 0, 1] = 255
    return rows.reshape(n, 3072)


def register_checksums(monkeypatch: pytest.MonkeyPatch, cls: type, md5: dict[str, str]) -> None:
    """Makes torchvision's integrity check accept the tiny files (their md5 instead of the official one)."""
    monkeypatch.setattr(cls, "train_list", [[name, md5[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5[name]] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})


def write_tiny_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five training batches of 2 images (labels 0..9) and a test batch of 3 (labels 7, 8, 9)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    md5 = {}
    for b in range(5):
        batch = {"batch_label": f"training batch {b + 1} of 5", "labels": [2 * b, 2 * b + 1]}
        batch |= {"data": cifar_images(2, 2 * b), "filenames": [f"t{2 * b}.png", f"t{2 * b + 1}.png"]}
        md5[f"data_batch_{b + 1}"] = write_pickle(folder / f"data_batch_{b + 1}", batch)
    test = {"batch_label": "testing batch 1 of 1", "labels": [7, 8, 9], "data": cifar_images(3, 100)}
    md5["test_batch"] = write_pickle(folder / "test_batch", test | {"filenames": ["a", "b", "c"]})
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 2, "num_vis": 3072}
    md5["batches.meta"] = write_pickle(folder / "batches.meta", meta)
    register_checksums(monkeypatch, datasets.CIFAR10, md5)


def test_cifar10_reads_pickle_batches_and_validates_on_the_test_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_cifar10(tmp_path, monkeypatch)
    splits = load_splits("cifar10", tmp_path)

    assert (splits.name, splits.num_classes, splits.in_channels, splits.image_size) == ("cifar10", 10, 3, 32)
    train_x, train_y = splits.train
    test_x, test_y = splits.test
    assert train_x.shape == (10, 3, 32, 32) and test_x.shape == (3, 3, 32, 32)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64 and train_x.is_contiguous()
    assert train_y.tolist() == list(range(10)) and test_y.tolist() == [7, 8, 9]
    assert splits.validation[0] is test_x and splits.validation[1] is test_y

    def expected(value: int, channel: int) -> float:
        return (value / 255 - CIFAR10_MEAN[channel]) / CIFAR10_STD[channel]

    for c in range(3):  # channel planes land in NCHW order, per-channel constants applied
        assert test_x[1, c, 5, 7].item() == pytest.approx(expected(40 * c + 101, c), abs=1e-6)
        assert train_x[9, c, 31, 31].item() == pytest.approx(expected(40 * c + 9, c), abs=1e-6)
    assert test_x[0, 0, 0, 1].item() == pytest.approx(expected(255, 0), abs=1e-6)  # row 0, column 1
    assert test_x[0, 0, 1, 0].item() == pytest.approx(expected(100, 0), abs=1e-6)


def test_cifar100_reads_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    md5 = {}
    for name, n, offset in (("train", 4, 0), ("test", 2, 50)):
        fine = [offset + 20 * i for i in range(n)]
        batch = {"data": cifar_images(n, offset), "fine_labels": fine, "coarse_labels": [0] * n}
        md5[name] = write_pickle(folder / name, batch | {"filenames": [str(i) for i in range(n)]})
    meta = {
        "fine_label_names": [f"f{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    md5["meta"] = write_pickle(folder / "meta", meta)
    register_checksums(monkeypatch, datasets.CIFAR100, md5)

    splits = load_splits("cifar100", tmp_path)

    assert (splits.num_classes, splits.in_channels) == (100, 3)
    assert splits.train[0].shape == (4, 3, 32, 32)
    assert splits.train[1].tolist() == [0, 20, 40, 60] and splits.test[1].tolist() == [50, 70]
    assert splits.validation[0] is splits.test[0]
    expected = (91 / 255 - CIFAR100_MEAN[1]) / CIFAR100_STD[1]  # test image 1, green: 40 + 50 + 1
    assert splits.test[0][1, 1, 3, 3].item() == pytest.approx(expected, abs=1e-6)


# --- missing files ---


EXPECTED_FILES = {
    "mnist": (
        Path("MNIST/raw"),
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
    ),
    "cifar10": (
        Path("cifar-10-batches-py"),
        [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"],
    ),
    "cifar100": (Path("cifar-100-python"), ["train", "test", "meta"]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_missing_files_are_named_with_their_folder(tmp_path: Path, name: str) -> None:
    folder, files = EXPECTED_FILES[name]
    with pytest.raises(FileNotFoundError) as caught:
        load_splits(name, tmp_path)
    message = str(caught.value)
    assert str((tmp_path / folder).resolve()) in message
    assert all(f in message for f in files)
    assert "--download" in message


def test_only_the_missing_files_are_named(tmp_path: Path) -> None:
    write_tiny_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte in") as caught:
        load_splits("mnist", tmp_path)
    assert "train-images" not in str(caught.value)


def test_a_failed_download_reports_the_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(self: datasets.MNIST) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets.MNIST, "download", no_network)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as caught:
        load_splits("mnist", tmp_path, download=True)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_unknown_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        load_splits("svhn")


# --- digits ---


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits("digits", "ignored/folder")


def test_digits_split_sizes_shapes_and_normalisation(digits: Splits) -> None:
    assert (digits.name, digits.num_classes, digits.in_channels, digits.image_size) == ("digits", 10, 1, 28)
    sizes = [len(pair[0]) for pair in (digits.train, digits.validation, digits.test)]
    assert sizes == [1079, 359, 359]
    for images, labels in (digits.train, digits.validation, digits.test):
        assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and len(labels) == len(images)
        assert set(labels.tolist()) == set(range(10))
    train = digits.train[0]
    assert train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


def test_digits_split_is_a_fixed_partition() -> None:
    train, validation, test = split_indices(1797)
    everything = torch.cat([train, validation, test])
    assert sorted(everything.tolist()) == list(range(1797))  # disjoint and complete
    again = split_indices(1797)
    assert all(torch.equal(a, b) for a, b in zip((train, validation, test), again, strict=True))
    torch.manual_seed(123)  # a training seed has no say in the split
    assert torch.equal(split_indices(1797)[0], train)


def test_digits_load_is_deterministic(digits: Splits) -> None:
    again = load_splits("digits")
    for mine, theirs in zip((digits.train, digits.test), (again.train, again.test), strict=True):
        assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])


def test_splits_to_moves_a_shared_tensor_once() -> None:
    images, labels = torch.zeros(4, 3, 2, 2), torch.arange(4)
    splits = Splits("cifar10", (images, labels), (images, labels), (images, labels), 10, 3, 2)
    moved = splits.to("meta")
    assert moved.train[0].device.type == "meta"
    assert moved.validation[0] is moved.test[0] is moved.train[0]


# --- DeviceBatches ---


def indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is their own index, and labels equal to it."""
    labels = torch.arange(n)
    return labels.to(torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(), labels


def seen(batches: DeviceBatches) -> list[int]:
    out = []
    for images, labels in batches:
        assert torch.equal(images[:, 0, 0, 0].long(), labels)  # images and labels stay paired
        out.extend(labels.tolist())
    return out


@pytest.mark.parametrize("world", [1, 2, 4])
def test_device_batches_cover_every_index_once_per_epoch_across_ranks(world: int) -> None:
    n, batch_size = 48, 5
    images, labels = indexed(n)
    orders = {}
    for epoch in (0, 1):
        everything = []
        for rank in range(world):
            sampler = DistributedSampler(labels, num_replicas=world, rank=rank, shuffle=True, seed=7)
            batches = DeviceBatches(images, labels, batch_size, sampler)
            batches.set_epoch(epoch)
            mine = seen(batches)
            assert len(batches) == -(-(n // world) // batch_size)
            everything.extend(mine)
        assert sorted(everything) == list(range(n))
        orders[epoch] = everything
    assert orders[0] != orders[1]  # set_epoch reshuffles


def test_device_batches_drop_last_and_uneven_shards() -> None:
    n = 10
    images, labels = indexed(n)
    sampler = DistributedSampler(labels, num_replicas=3, rank=0, shuffle=True, seed=0)  # 4 indices (padded)
    kept = DeviceBatches(images, labels, 3, sampler, drop_last=True)
    assert len(kept) == 1 and len(seen(kept)) == 3
    everything = []
    for rank in range(3):
        sampler = DistributedSampler(labels, num_replicas=3, rank=rank, shuffle=True, seed=0)
        everything.extend(seen(DeviceBatches(images, labels, 3, sampler)))
    assert set(everything) == set(range(n)) and len(everything) == 12  # padding repeats two indices


def test_device_batches_keep_order_and_channels_last() -> None:
    images, labels = indexed(7)
    batches = DeviceBatches(images, labels, 4, SequentialSampler(labels), channels_last=True)
    assert seen(batches) == list(range(7))
    first, _ = next(iter(batches))
    assert first.is_contiguous(memory_format=torch.channels_last) and first.shape == (4, 3, 2, 2)


def test_device_batches_refuse_mismatched_inputs() -> None:
    images, labels = indexed(4)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        DeviceBatches(images, labels[:3], 2, SequentialSampler(labels))
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(images, labels, 0, SequentialSampler(labels))
