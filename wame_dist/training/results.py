"""The record of one run: per-epoch metrics, the chosen epoch, and the settings that produced them.

Rank 0 keeps ``metrics.jsonl`` (one line per epoch) and, at the end, ``result.json`` in the run's folder;
both are rewritten atomically, so a crash leaves the previous complete version. ``result.json`` is a run
record (its format: :mod:`wame_dist.report.record`) and says what produced it: ``"environment"`` (code,
software, machine, job shape; :mod:`wame_dist.provenance`) and ``settings.effective_config``
(the DeepSpeed-style config as the engine received it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wame_dist import atomic
from wame_dist.report.record import KEY_FIELDS, RESULT_FILE
from wame_dist.training.config import RunConfig
from wame_dist.training.optimizers import rule_name


class RunRecorder:
    def __init__(
        self,
        run: RunConfig,
        settings: dict[str, Any],
        init_hash: str,
        optimizer: dict,
        enabled: bool,
        *,
        environment: dict[str, Any],
        effective_config: dict[str, Any],
    ):
        """``environment``: what produced the run (:mod:`wame_dist.provenance`); ``effective_config``: the
        config its engine received."""
        self.out = Path(run.out_dir)
        key = (
            run.data.dataset,
            run.model_name,
            rule_name(optimizer),
            run.seed,
            optimizer.get("params", {}).get("lr"),
        )
        self.key = dict(zip(KEY_FIELDS, key, strict=True))
        self.settings = settings
        self.init_hash = init_hash
        self.enabled = enabled
        self.history: list[dict[str, float]] = []
        self.environment = environment
        self.effective_config = effective_config

    def epoch(self, epoch: int, train_loss: float, val_acc: float, test_acc: float, wall_s: float) -> None:
        self.history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_acc": val_acc,
                "test_acc": test_acc,
                "wall_s": wall_s,
            }
        )
        if self.enabled:
            atomic.write_text(self.out / "metrics.jsonl", "".join(json.dumps(e) + "\n" for e in self.history))

    def describe_last(self) -> str:
        e = self.history[-1]
        return (
            f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}, validation {100 * e['val_acc']:.2f}%, "
            f"test {100 * e['test_acc']:.2f}% ({e['wall_s']:.1f} s)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "init_hash": self.init_hash}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])

    def finish(self, run_settings: dict[str, Any], global_steps: int) -> dict[str, Any]:
        """The result: best epoch by validation accuracy (the first one on ties) and its test accuracy."""
        best = max(self.history, key=lambda e: (e["val_acc"], -e["epoch"]))
        result = {
            "key": self.key,
            "init_hash": self.init_hash,
            "epochs": self.history,
            "best_epoch": best["epoch"],
            "test_acc_at_best": best["test_acc"],
            "time_to_best_s": sum(e["wall_s"] for e in self.history if e["epoch"] <= best["epoch"]),
            "settings": {
                **run_settings,
                "network": self.settings,
                "global_steps": global_steps,
                "effective_config": self.effective_config,
            },
            "environment": self.environment,
        }
        if self.enabled:
            atomic.write_text(self.out / RESULT_FILE, json.dumps(result, indent=1))
        return result
