"""wame_dist.models: the Table 1 networks' shapes, parameter counts and layer order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wame_dist.hashing import lowbias32
from wame_dist.models import SampleDropout, build_model, count_parameters, set_samples


def conv(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a k x k convolution with bias."""
    return c_in * c_out * k * k + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def table1a_count(c64: int, c128: int, d1024: int, *, classes: int = 10, side: int = 7) -> int:
    return (
        conv(1, c64, 5)
        + conv(c64, c64, 1)
        + conv(c64, c128, 5)
        + conv(c128, c128, 1)
        + dense(c128 * side * side, d1024)
        + dense(d1024, classes)
    )


def table1b_count(c96: int, c192: int, *, classes: int) -> int:
    return (
        conv(3, c96, 3)
        + 2 * conv(c96, c96, 3)
        + conv(c96, c192, 3)
        + 3 * conv(c192, c192, 3)
        + conv(c192, c192, 1)
        + conv(c192, classes, 1)
    )


def test_parameter_counts_at_full_width() -> None:
    assert table1a_count(64, 128, 1024) == 6_661_066  # dense 1024 on 128 x 7 x 7 dominates
    full = build_model("table1a", num_classes=10, in_channels=1)
    assert count_parameters(full) == table1a_count(64, 128, 1024)
    for classes in (10, 100):
        model = build_model("table1b", num_classes=classes, in_channels=3)
        assert count_parameters(model) == table1b_count(96, 192, classes=classes)
    assert table1b_count(96, 192, classes=10) == 1_369_738


def test_parameter_counts_at_reduced_width() -> None:
    narrow_a = build_model("table1a", num_classes=10, in_channels=1, width=0.25)
    assert count_parameters(narrow_a) == table1a_count(16, 32, 256)
    narrow_b = build_model("table1b", num_classes=10, in_channels=3, width=0.25)
    assert count_parameters(narrow_b) == table1b_count(24, 48, classes=10)
    tiny = build_model("table1b", num_classes=10, in_channels=3, width=0.001)  # every width at least 1
    assert count_parameters(tiny) == table1b_count(1, 1, classes=10)


@pytest.mark.parametrize(
    ("name", "channels", "side", "classes"),
    [
        ("table1a", 1, 28, 10),
        ("table1a", 3, 32, 10),
        ("table1b", 3, 32, 10),
        ("table1b", 3, 32, 100),
        ("table1b", 1, 28, 10),
    ],
)
def test_output_is_one_logit_per_class(name: str, channels: int, side: int, classes: int) -> None:
    model = build_model(name, num_classes=classes, in_channels=channels, width=0.25, image_size=side)
    out = model(torch.randn(2, channels, side, side))
    assert out.shape == (2, classes)


def layer_kinds(model: nn.Module) -> list[str]:
    names = {
        nn.Conv2d: "conv",
        nn.ReLU: "relu",
        nn.MaxPool2d: "pool",
        nn.Dropout: "dropout",
        SampleDropout: "dropout",
        nn.Linear: "dense",
    }
    names |= {nn.Flatten: "flatten", nn.AdaptiveAvgPool2d: "gap"}
    return [names[type(m)] for m in model.children()]


def test_table1a_layer_order_and_dropout() -> None:
    model = build_model("table1a", num_classes=10, in_channels=1)
    block = ["conv", "relu", "conv", "relu", "pool"]
    assert layer_kinds(model) == [*block, *block, "flatten", "dense", "relu", "dropout", "dense"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (64, (5, 5), (2, 2)),
        (64, (1, 1), (0, 0)),
        (128, (5, 5), (2, 2)),
        (128, (1, 1), (0, 0)),
    ]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]


def test_table1b_layer_order_and_dropout_after_the_strided_convolutions() -> None:
    model = build_model("table1b", num_classes=10, in_channels=3)
    kinds = layer_kinds(model)
    assert kinds == [
        *["conv", "relu"] * 3,
        "dropout",
        *["conv", "relu"] * 3,
        "dropout",
        *["conv", "relu"] * 2,
        "conv",
        "gap",
        "flatten",
    ]
    children = list(model.children())
    for i, layer in enumerate(children):
        if isinstance(layer, nn.Dropout):
            assert layer.p == 0.5
            assert isinstance(children[i - 2], nn.Conv2d) and children[i - 2].stride == (2, 2)
    convs = [m for m in children if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 96, 96, 192, 192, 192, 192, 192, 10]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1, 1]


def test_eval_mode_is_deterministic_and_train_mode_drops_out() -> None:
    torch.manual_seed(0)
    model = build_model("table1a", num_classes=10, in_channels=1, width=0.25)
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_bad_names_and_widths_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", num_classes=10, in_channels=3)
    with pytest.raises(ValueError, match="width must be positive"):
        build_model("table1a", num_classes=10, in_channels=1, width=0)


# --- SampleDropout: masks keyed by the sample, not the rank ---


def lowbias32_reference(x: int) -> int:
    """Wellons' lowbias32 on Python integers (the oracle for the int64 tensor version)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_lowbias32_matches_the_integer_definition_over_the_whole_32_bit_range() -> None:
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFE, 0xFFFFFFFF]
    values += torch.randint(0, 2**32, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    got = lowbias32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [lowbias32_reference(v) for v in values]


def keyed(p: float = 0.5, *, layer: int = 0) -> SampleDropout:
    module = SampleDropout(p, layer=layer)
    module.train()
    return module


def test_a_samples_mask_does_not_depend_on_its_batch_or_position() -> None:
    """What makes runs world-size independent: 8 samples as one batch, as two halves (two ranks), or
    reversed give each sample the same mask."""
    x = torch.ones(8, 3, 4, 4)
    indices = torch.tensor([5, 17, 2, 40, 41, 9, 1000, 3])
    whole = keyed()
    whole.set_keys(seed=7, epoch=2, indices=indices)
    together = whole(x)
    halves = []
    for part in (slice(0, 4), slice(4, 8)):
        rank = keyed()
        rank.set_keys(seed=7, epoch=2, indices=indices[part])
        halves.append(rank(x[part]))
    assert torch.equal(torch.cat(halves), together)
    flipped = keyed()
    flipped.set_keys(seed=7, epoch=2, indices=indices.flip(0))
    assert torch.equal(flipped(x).flip(0), together)


def test_masks_drop_p_of_the_elements_scale_the_rest_and_change_with_seed_epoch_layer() -> None:
    x = torch.ones(64, 1024)
    indices = torch.arange(64)
    masks = {}
    for name, (seed, epoch, layer) in {
        "base": (0, 1, 0),
        "seed": (1, 1, 0),
        "epoch": (0, 2, 0),
        "layer": (0, 1, 1),
    }.items():
        module = keyed(0.3, layer=layer)
        module.set_keys(seed, epoch, indices)
        out = module(x)
        assert set(out.unique().tolist()) <= {0.0, torch.tensor(1 / 0.7).item()}  # float32's 1/0.7
        # 65,536 Bernoulli(0.3) draws: standard deviation 0.0018, so 0.01 is over 5 sigma
        assert abs((out == 0).float().mean().item() - 0.3) < 0.01
        masks[name] = out != 0
    for name in ("seed", "epoch", "layer"):
        agreement = (masks[name] == masks["base"]).float().mean().item()
        assert abs(agreement - (0.7**2 + 0.3**2)) < 0.01  # independent masks agree on 58% by chance


def test_unkeyed_it_is_nn_dropout_and_eval_is_the_identity() -> None:
    x = torch.randn(4, 10)
    module = keyed(0.5)
    torch.manual_seed(3)
    expected = nn.functional.dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    assert torch.equal(module(x), expected)
    module.set_keys(0, 1, torch.arange(4))
    module.eval()
    assert torch.equal(module(x), x)


def test_a_batch_of_another_size_than_its_keys_is_refused() -> None:
    model = build_model("table1a", num_classes=10, in_channels=1, width=0.125)
    model.train()
    set_samples(model, seed=0, epoch=1, indices=torch.arange(3))
    with pytest.raises(RuntimeError, match="keyed for 3 samples but got a batch of 2"):
        model(torch.randn(2, 1, 28, 28))
    set_samples(model, seed=0, epoch=1, indices=None)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
