"""Lightning: :class:`RequireWAME`, a callback that stops a run whose DeepSpeed engine does not step WAME."""

from __future__ import annotations

import lightning.pytorch as pl

from wame_dist.deepspeed.registration import require_registered, require_wame


class RequireWAME(pl.Callback):
    """``Trainer(callbacks=[RequireWAME()])`` with a ``DeepSpeedStrategy``: raises
    :class:`wame_dist.errors.BadInput` with the fix before DeepSpeed starts when the strategy's config names
    WAME but :func:`wame_dist.deepspeed.register` has not run, and at the start of training when the
    optimizer DeepSpeed steps is not WAME."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require_registered(getattr(trainer.strategy, "config", None))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require_wame(trainer.strategy.model)
