"""HF Trainer: :class:`RequireWAME`, a callback that stops a run whose DeepSpeed engine does not step WAME.

transformers drops an optimizer passed as ``Trainer(optimizers=(WAME(...), None))`` under DeepSpeed and
trains with AdamW, and Accelerate swaps a client optimizer for DeepSpeedCPUAdam under ZeRO optimizer offload
unless the config sets ``"zero_force_ds_cpu_optimizer": false``; both happen without a word.
"""

from __future__ import annotations

from transformers import Trainer, TrainerCallback

from wame_dist.deepspeed.registration import require_registered, require_wame


class RequireWAME(TrainerCallback):
    """``trainer.add_callback(RequireWAME(trainer))``: raises :class:`wame_dist.errors.BadInput` with the fix
    now when the trainer's DeepSpeed config names WAME but :func:`wame_dist.deepspeed.register` has not run,
    and at the start of training when the optimizer DeepSpeed steps is not WAME.

    (The trainer is passed in because transformers hands callbacks the optimizer given to the Trainer, not
    the one DeepSpeed steps.)"""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        hf_config = getattr(trainer.args, "hf_deepspeed_config", None)
        require_registered(getattr(hf_config, "config", None))

    def on_train_begin(self, args, state, control, **kwargs):
        require_wame(self.trainer.optimizer)
