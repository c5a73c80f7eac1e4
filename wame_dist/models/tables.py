"""The two networks of the paper's Table 1, with a width multiplier for CPU-sized runs."""

from __future__ import annotations

from torch import nn

from wame_dist.models.dropout import SampleDropout


def scaled(count: int, width: float) -> int:
    """``count`` channels or units times ``width``, rounded, and at least 1."""
    return max(1, round(count * width))


def table1a(*, num_classes: int, in_channels: int, image_size: int = 28, width: float = 1.0) -> nn.Sequential:
    """Table 1a (MNIST): 64 conv 5x5, 64 conv 1x1, max-pool, 128 conv 5x5, 128 conv 1x1, max-pool,
    dense 1024, 50% dropout, then a linear layer to ``num_classes`` logits.

    Convolutions are 'same'-padded, so ``image_size`` (28 for MNIST) is halved by each 2x2 max-pool
    (floor) and sets the input width of the dense layer. ReLU follows every convolution and the dense
    layer; dropout follows the dense layer's ReLU.
    """
    c64, c128, d1024 = scaled(64, width), scaled(128, width), scaled(1024, width)
    side = image_size // 2 // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, c64, 5, padding=2),
        nn.ReLU(),
        nn.Conv2d(c64, c64, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c64, c128, 5, padding=2),
        nn.ReLU(),
        nn.Conv2d(c128, c128, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c128 * side * side, d1024),
        nn.ReLU(),
        SampleDropout(0.5, layer=0),
        nn.Linear(d1024, num_classes),
    )


def table1b(*, num_classes: int, in_channels: int, width: float = 1.0) -> nn.Sequential:
    """Table 1b (CIFAR, all-convolutional): 2 x 96 conv 3x3, 96 conv 3x3 stride 2, 2 x 192 conv 3x3,
    192 conv 3x3 stride 2, 192 conv 3x3, 192 conv 1x1, ``num_classes`` conv 1x1, global average pooling.

    3x3 convolutions are padded by 1 ('same'; a stride-2 one halves an even side: 32 -> 16 -> 8).
    ReLU follows every convolution but the last, whose global average is the logits; 50% dropout
    follows the ReLU of each stride-2 convolution. Any input size works (global pooling).
    """
    c96, c192 = scaled(96, width), scaled(192, width)
    return nn.Sequential(
        nn.Conv2d(in_channels, c96, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c96, c96, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c96, c96, 3, stride=2, padding=1),
        nn.ReLU(),
        SampleDropout(0.5, layer=0),
        nn.Conv2d(c96, c192, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c192, c192, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c192, c192, 3, stride=2, padding=1),
        nn.ReLU(),
        SampleDropout(0.5, layer=1),
        nn.Conv2d(c192, c192, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c192, c192, 1),
        nn.ReLU(),
        nn.Conv2d(c192, num_classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
