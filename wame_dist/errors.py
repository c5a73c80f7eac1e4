"""The one exception type for bad input, and the one way a command reports it: a line on stderr, exit 2.

Every entry point (the ``wame-dist`` dispatcher for all its subcommands, ``python -m wame_dist.training``)
runs its ``main`` through :func:`run_command`; nothing else catches :class:`BadInput`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

#: The exit status of a command refused for bad input (argparse's usage errors use the same).
BAD_INPUT_STATUS = 2


class BadInput(ValueError):
    """Wrong hyperparameters, configs, paths, world sizes or checkpoints, detected before work starts."""


def run_command(prog: str, main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """``main(argv)``'s exit status; a :class:`BadInput` becomes ``PROG: error: MESSAGE`` on stderr and 2."""
    try:
        return main(argv)
    except BadInput as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return BAD_INPUT_STATUS
