"""Figure 1: average training loss per epoch, one line per optimizer, shaded +-sigma across seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wame_dist.report.results import Run, display_name


def loss_curve(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean training loss and its sample standard deviation (ddof = 1; 0 for one run) per epoch.

    An epoch is averaged over the runs that recorded it.
    """
    epochs = np.array(sorted({e for run in runs for e in run.train_loss}))
    means, sigmas = [], []
    for epoch in epochs:
        values = np.array([run.train_loss[epoch] for run in runs if epoch in run.train_loss])
        means.append(values.mean())
        sigmas.append(values.std(ddof=1) if len(values) > 1 else 0.0)
    return epochs, np.array(means), np.array(sigmas)


def plot_training_loss(by_optimizer: Mapping[str, Sequence[Run]], title: str, path: Path) -> Path:
    """Draws Figure 1 for one data set into the PNG ``path``: mean loss per optimizer with a +-sigma band.

    Renders with matplotlib's Agg canvas directly (no pyplot, no global backend state).
    """
    figure = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for optimizer, runs in by_optimizer.items():
        epochs, mean, sigma = loss_curve(runs)
        (line,) = axes.plot(epochs, mean, label=f"{display_name(optimizer)} ({len(runs)} runs)")
        axes.fill_between(epochs, mean - sigma, mean + sigma, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("epoch")
    axes.set_ylabel("average training loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
