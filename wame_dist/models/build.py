"""``build_model``: a Table 1 network by name, and ``count_parameters``."""

from __future__ import annotations

from torch import nn

from wame_dist.models.tables import table1a, table1b

MODELS = ("table1a", "table1b")


def build_model(
    name: str, *, num_classes: int, in_channels: int, width: float = 1.0, image_size: int = 28
) -> nn.Module:
    """Builds ``"table1a"`` (the MNIST network) or ``"table1b"`` (the CIFAR all-conv network) of Table 1.

    The output is ``num_classes`` logits; the softmax of the paper's last layer lives in the loss
    (``cross_entropy``). ``width`` multiplies every hidden channel and unit count (rounded, at least 1)
    for CPU-sized runs; 1.0 is the paper's network. ``image_size`` is the input side, needed by
    table1a's dense layer only (28 for MNIST and the upsampled digits).

    Choices the paper leaves open, made here:

    * padding: 'same' for every convolution (5x5: 2, 3x3: 1, 1x1: 0);
    * activation: ReLU after every convolution and after the dense layer, none on the output
      (table1b's last 1x1 convolution is averaged into logits as they are);
    * dropout: table1a, 50% after the dense 1024 (after its ReLU); table1b, 50% after each stride-2
      convolution (after its ReLU), as the paper's text says; element-wise, each sample's mask a
      function of (seed, epoch, its training-set index) so that it is the same on any number of ranks
      (:class:`~wame_dist.models.dropout.SampleDropout`; ``nn.Dropout`` when not keyed);
    * no batch normalisation, no weight decay in the model (Table 1 lists none);
    * initialisation: PyTorch's defaults (Kaiming-uniform with a = sqrt(5), uniform biases); the paper
      does not state one (Keras' default at the time was Glorot-uniform weights, zero biases). The
      experiment shares one draw per seed across all optimizers.

    The module holds no parallelism of any kind; wrapping it is the trainer's business.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if name == "table1a":
        return table1a(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)
    if name == "table1b":
        return table1b(num_classes=num_classes, in_channels=in_channels, width=width)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")


def count_parameters(model: nn.Module) -> int:
    """The number of scalar parameters of ``model`` (all of them; every one is trainable here)."""
    return sum(p.numel() for p in model.parameters())
