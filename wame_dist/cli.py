"""``wame-dist``: the project's command line. Each subcommand lives in the module that does its job; bad
input ends every one of them the same way (:func:`wame_dist.errors.run_command`: one line, exit 2)."""

from __future__ import annotations

import importlib
import sys

from wame_dist.errors import run_command

#: subcommand -> (module, one-line help); the module's ``main(argv) -> int`` runs it.
COMMANDS = {
    "init-weights": ("wame_dist.training.init_weights_cli", "write the initial weights of a seed"),
    "report": ("wame_dist.report", "Table 2, Figure 1 and Friedman tests from a results file"),
    "study": ("wame_dist.experiment.cli", "run the paper's protocol for one data set (tune, runs, report)"),
    "sweep": ("wame_dist.sweep.cli", "a study's seeds x optimizers as submitit jobs (SLURM array or local)"),
    "reshard": (
        "wame_dist.deepspeed.checkpoint.reshard_cli",
        "rewrite a DeepSpeed ZeRO checkpoint for another world size or ZeRO stage",
    ),
    "export": (
        "wame_dist.deepspeed.checkpoint.export_cli",
        "fp32 weights and WAME state by parameter name from a ZeRO checkpoint",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: wame-dist COMMAND [options]   (wame-dist COMMAND --help for details)\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<14} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, _ = COMMANDS[argv[0]]
    return run_command(f"wame-dist {argv[0]}", importlib.import_module(module).main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
