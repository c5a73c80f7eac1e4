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


@dataclass
class ReferenceKerasWAME:
    """The authors' published WAME, transcribed element by element from their Keras code.

    Read on 2026-12-01: the authors' Keras fork, ``keras/optimizers.py`` class ``WAME`` (the same class was
    proposed to Keras as keras-team/keras pull request 10899 "add WAME and RPROP", closed unmerged). Its
    ``get_updates``, per weight ``p`` with gradient ``g`` (Keras graph ops, float32 there)::

        lr = self.lr;  if initial_decay > 0: lr *= 1 / (1 + decay * iterations)   # iterations: from 0
        t = iterations + 1
        lr_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        change = pg * g                                   # pg = K.zeros at first
        a_t = a * eta_minus if change < 0 else (a * eta_plus if change > 0 else a)   # a = K.ones
        a_clipped = clip(a_t, eta_min, eta_max)
        v_t = beta_2 * v + (1 - beta_2) * g**2           # v = K.zeros
        am_t = beta_a * am + (1 - beta_a) * a_clipped     # am = K.ones
        p_t = p - lr_t * (a_clipped / am_t) * g / (sqrt(v_t) + epsilon)
        updates: v <- v_t, p <- p_t, pg <- p, a <- a_t (unclipped), am <- am_t

    with defaults lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-11, decay 0, eta_plus 1.2, eta_minus 0.1,
    eta_min 0.01, eta_max 100, beta_a 0.9. ``pg <- p`` stores the parameter (read here as its value before
    the step), so the "previous gradient" is the previous weight; ``sign_source="gradient"`` stores ``g``
    instead. The ``ms``, ``acc_vs`` slots of the code are never read. This transcription keeps the whole
    previous value and multiplies (``change = prev * g``), as the code does.
    """

    weights: list[float]
    lr: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    beta_a: float = 0.9
    eta_minus: float = 0.1
    eta_plus: float = 1.2
    eta_min: float = 0.01
    eta_max: float = 100.0
    epsilon: float = 1e-11
    decay: float = 0.0
    sign_source: str = "weight"
    maximize: bool = False
    iterations: int = 0
    prev: list[float] = field(default_factory=list)
    a: list[float] = field(default_factory=list)
    am: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.weights)
        self.prev, self.a, self.am, self.v = [0.0] * n, [1.0] * n, [1.0] * n, [0.0] * n

    def step(self, grads: list[float]) -> None:
        lr = self.lr
        if self.decay > 0:
            lr *= 1.0 / (1.0 + self.decay * self.iterations)
        t = self.iterations + 1
        lr_t = lr * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        for i, raw in enumerate(grads):
            g = -raw if self.maximize else raw
            p = self.weights[i]
            change = self.prev[i] * g
            if change < 0:
                self.a[i] = self.a[i] * self.eta_minus
            elif change > 0:
                self.a[i] = self.a[i] * self.eta_plus
            a_clipped = min(max(self.a[i], self.eta_min), self.eta_max)
            self.v[i] = self.beta_2 * self.v[i] + (1.0 - self.beta_2) * g * g
            self.am[i] = self.beta_a * self.am[i] + (1.0 - self.beta_a) * a_clipped
            self.weights[i] = p - lr_t * (a_clipped / self.am[i]) * g / (math.sqrt(self.v[i]) + self.epsilon)
            self.prev[i] = p if self.sign_source == "weight" else g
        self.iterations += 1
