"""An independent float64 transcription of Algorithm 1 (Mosca & Magoulas, 2017), element by element.

Written from the spec (../shared/docs/wame-spec.md §1) with plain Python floats and no code shared with
wame_dist, so that the optimizer is checked against the paper, not against itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _sign(x: float) -> int:
    if x > 0:
        return 1
    if x < 0:
        return -1
    return 0


@dataclass
class ReferenceWAME:
    """One weight vector (a list of floats) and its WAME state; ``step(grad)`` applies Algorithm 1."""

    weights: list[float]
    lr: float = 1e-3
    alpha: float = 0.9
    eta_minus: float = 0.1
    eta_plus: float = 1.2
    zeta_min: float = 0.01
    zeta_max: float = 100.0
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False
    literal: bool = False
    maximize: bool = False
    prev_sign: list[int] = field(default_factory=list)
    zeta: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    theta: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.weights)
        self.prev_sign = [0] * n  # Algorithm 1 line 2: the "previous gradient" of step 1 is 0
        self.zeta = [1.0] * n
        self.z = [0.0] * n
        self.theta = [0.0] * n

    def step(self, grads: list[float]) -> None:
        for i, raw in enumerate(grads):
            w = self.weights[i]
            g = -raw if self.maximize else raw
            if self.weight_decay:
                if self.decoupled:
                    w = w * (1.0 - self.lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * w
            product = _sign(g) * self.prev_sign[i]  # lines 4 and 6: sign of dE(t)/dw * dE(t-1)/dw
            if product > 0:
                self.zeta[i] = min(self.zeta[i] * self.eta_plus, self.zeta_max)  # line 5
            elif product < 0:
                self.zeta[i] = max(self.zeta[i] * self.eta_minus, self.zeta_min)  # line 7
            self.z[i] = self.alpha * self.z[i] + (1.0 - self.alpha) * self.zeta[i]  # line 9
            self.theta[i] = self.alpha * self.theta[i] + (1.0 - self.alpha) * g * g  # line 10
            divisor = self.theta[i] if self.literal else math.sqrt(self.theta[i])
            self.weights[i] = w - self.lr * self.z[i] * g / (divisor + self.eps)  # lines 11-12
            self.prev_sign[i] = _sign(g)
