"""Keras's learning-rate decay, for any optimizer: after ``k`` optimizer steps the rate is
``lr / (1 + decay * k)`` (Keras 1/2 ``decay``; the authors' experiments use it for every rule).

A ``torch.optim.lr_scheduler.LambdaLR`` over a picklable factor, so DeepSpeed and DCP checkpoints carry its
position and a resumed run continues the decay where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InverseTimeDecay:
    """The factor ``1 / (1 + decay * k)`` of the rate after ``k`` steps."""

    decay: float

    def __call__(self, k: int) -> float:
        return 1.0 / (1.0 + self.decay * k)


def scheduler(optimizer: torch.optim.Optimizer, decay: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The decay as a scheduler of ``optimizer``, stepped once after each optimizer step.

    >>> param = torch.nn.Parameter(torch.zeros(1))
    >>> optimizer = torch.optim.SGD([param], lr=0.1)
    >>> decay = scheduler(optimizer, 0.5)
    >>> for _ in range(2):
    ...     optimizer.step()
    ...     decay.step()
    >>> round(optimizer.param_groups[0]["lr"], 6)  # 0.1 / (1 + 0.5 * 2)
    0.05
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, InverseTimeDecay(decay))
