"""Synchronised initial weights: one file per seed shared by every optimizer, and a cross-rank hash check.

The paper draws one set of initial weights per seed and starts every update rule from it. Here that set is
a file (``wame-dist init-weights``) holding the model's state dict, the settings that shape it, and the
SHA-256 of its parameters; a run started with ``--init-weights FILE`` checks all three. Every run, with
or without the file, hashes its parameters on every rank before training and fails loudly if any rank
holds different weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from wame_dist.atomic import torch_save
from wame_dist.data import SHAPES
from wame_dist.errors import BadInput
from wame_dist.models import build_model


def network_settings(dataset: str, model: str, width: float) -> dict[str, Any]:
    """Everything that shapes the network's weights (the seed aside)."""
    shape = SHAPES[dataset]
    return {"model": model, "width": width, **shape._asdict()}


def initial_network(settings: dict[str, Any], seed: int) -> torch.nn.Module:
    """The network of ``settings`` with the initial weights of ``seed`` (the same draw on every rank)."""
    torch.manual_seed(seed)
    return build_model(
        settings["model"],
        num_classes=settings["num_classes"],
        in_channels=settings["in_channels"],
        width=settings["width"],
        image_size=settings["image_size"],
    )


def parameters_hash(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers, in ``state_dict`` order (names, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_identical_across_ranks(digest: str) -> None:
    """Raises on every rank if any rank's parameter hash differs from rank 0's."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        listing = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
        raise RuntimeError(
            f"initial weights differ between ranks ({listing}); every rank must build the model with the "
            "same seed or load the same --init-weights file"
        )


def save_init_weights(path: str | Path, model: torch.nn.Module, settings: dict[str, Any]) -> str:
    """Writes ``model``'s weights and the ``settings`` that built it to ``path`` (atomically); returns the
    hash."""
    digest = parameters_hash(model)
    torch_save({"state_dict": model.state_dict(), "settings": settings, "sha256": digest}, path)
    return digest


def load_init_weights(path: str | Path, model: torch.nn.Module, settings: dict[str, Any]) -> str:
    """Loads ``path`` into ``model`` after checking it was made for the same network; returns the hash."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(
            f"initial-weights file {str(path)!r} does not exist; write it with "
            f"`wame-dist init-weights --out {path}` (same --dataset, --model, --width and --seed)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved_settings, state_dict, saved_hash = payload["settings"], payload["state_dict"], payload["sha256"]
    except Exception as error:
        raise BadInput(
            f"{str(path)!r} is not an initial-weights file written by wame-dist ({error})"
        ) from None
    differing = {k: (saved_settings.get(k), v) for k, v in settings.items() if saved_settings.get(k) != v}
    if differing:
        detail = ", ".join(f"{k}: file {a!r} vs run {b!r}" for k, (a, b) in differing.items())
        raise BadInput(f"initial-weights file {str(path)!r} was written for another network ({detail})")
    model.load_state_dict(state_dict)
    digest = parameters_hash(model)
    if digest != saved_hash:
        raise BadInput(
            f"initial-weights file {str(path)!r} is corrupt: its weights do not hash to its record"
        )
    return digest
