"""Reading finished runs (:mod:`wame_dist.report.record`) and choosing the runs to report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wame_dist.report.record import Key, key_of, read_records

#: Optimizer names as recorded, in the paper's order, with their display names (report/ imports nothing
#: else, so these mirror wame_dist.training.optimizers.RULES; a test holds them equal).
OPTIMIZERS = {
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "wame": "WAME",
    "wame_keras": "WAME (Keras code)",
    "wame_keras_grad": "WAME (Keras, gradient sign)",
    "wame_bf16": "WAME (bf16 state)",
    "wame_8bit": "WAME (8-bit state)",
}


@dataclass(frozen=True)
class Run:
    """One finished run: its key, training loss per (1-based) epoch, and its early-stopping outcome."""

    dataset: str
    model: str
    optimizer: str
    seed: int
    lr: float
    train_loss: Mapping[int, float]
    best_epoch: int
    test_acc_at_best: float
    time_to_best_s: float
    final: bool
    #: the record's ``environment.signature`` (code, software, accelerator; None in records that predate it)
    environment: str | None = None
    #: the whole ``environment`` record (hosts, job shape, launcher ...), for the report's Environment section
    environment_detail: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> Key:
        """What identifies a run: (dataset, model, optimizer, seed, lr), as
        :func:`~wame_dist.report.record.key_of` gives it."""
        return self.dataset, self.model, self.optimizer, self.seed, self.lr


def parse_run(record: Mapping) -> Run:
    """A :class:`Run` from one decoded record; ``final`` is ``settings.role == "final"``."""
    dataset, model, optimizer, seed, lr = key_of(record)
    return Run(
        dataset=dataset,
        model=model,
        optimizer=optimizer,
        seed=seed,
        lr=lr,
        train_loss={int(e["epoch"]): float(e["train_loss"]) for e in record["epochs"]},
        best_epoch=int(record["best_epoch"]),
        test_acc_at_best=float(record["test_acc_at_best"]),
        time_to_best_s=float(record["time_to_best_s"]),
        final=(record.get("settings") or {}).get("role") == "final",
        environment=(record.get("environment") or {}).get("signature"),
        environment_detail=record.get("environment") or {},
    )


def read_runs(path: str | Path) -> list[Run]:
    """Every run at ``path`` (a study's folder or a results file; see
    :func:`wame_dist.report.record.read_records`), in its stable order.

    Raises ``FileNotFoundError`` when there is nothing to read and ``ValueError`` when there is no run or a
    record is not valid (the message names its file and line).
    """
    runs = []
    for where, record in read_records(path):
        try:
            runs.append(parse_run(record))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{where}: not a valid run record ({err!r})") from err
    if not runs:
        raise ValueError(f"{path} holds no finished run")
    return runs


Groups = dict[tuple[str, str], dict[str, list[Run]]]


def chosen_runs(runs: Sequence[Run]) -> Groups:
    """The runs to report, as ``{(dataset, model): {optimizer: [runs]}}``, optimizers in the paper's order.

    A study may hold several learning rates per (dataset, optimizer, seed) from tuning. Per
    (dataset, model, optimizer), the runs marked ``settings.role == "final"`` (the chosen lr) are used if
    there is any, otherwise all of that group's runs. A run repeated under the same key (dataset, model,
    optimizer, seed, lr) counts once: its last line wins.
    """
    latest = {run.key: run for run in runs}
    groups: Groups = {}
    for run in latest.values():
        groups.setdefault((run.dataset, run.model), {}).setdefault(run.optimizer, []).append(run)
    order = {name: i for i, name in enumerate(OPTIMIZERS)}
    chosen: Groups = {}
    for experiment in sorted(groups):
        by_optimizer = groups[experiment]
        chosen[experiment] = {}
        for optimizer in sorted(by_optimizer, key=lambda name: (order.get(name, len(order)), name)):
            group = by_optimizer[optimizer]
            final = [run for run in group if run.final]
            chosen[experiment][optimizer] = sorted(final or group, key=lambda run: (run.seed, run.lr))
    return chosen


def display_name(optimizer: str) -> str:
    """The paper's spelling of an optimizer name (SGD, RMSprop, Adam, WAME); others as recorded."""
    return OPTIMIZERS.get(optimizer, optimizer)


def runs_by_environment(groups: Groups) -> dict[str | None, list[Run]]:
    """The chosen runs per environment signature (None: not recorded), in first-seen order."""
    found: dict[str | None, list[Run]] = {}
    for by_optimizer in groups.values():
        for runs in by_optimizer.values():
            for run in runs:
                found.setdefault(run.environment, []).append(run)
    return found


def check_one_environment(groups: Groups) -> None:
    """Raises ``ValueError`` when the chosen runs come from more than one environment signature (other
    code, software or accelerator): one table must not silently mix them."""
    found = runs_by_environment(groups)
    if len(found) > 1:
        listing = "; ".join(
            f"{len(runs)} run(s) from [{sig or 'not recorded'}]" for sig, runs in found.items()
        )
        raise ValueError(
            f"the results mix runs from {len(found)} environments ({listing}); report each environment's "
            "runs from its own study folder, or pass --mixed-environments to report them together (the "
            "report then lists every environment and its runs)"
        )
