"""The shape of each data set's inputs and outputs, known without reading the data."""

from __future__ import annotations

from typing import NamedTuple


class Shape(NamedTuple):
    in_channels: int
    image_size: int
    num_classes: int


SHAPES = {
    "digits": Shape(1, 28, 10),
    "mnist": Shape(1, 28, 10),
    "cifar10": Shape(3, 32, 10),
    "cifar100": Shape(3, 32, 100),
}
