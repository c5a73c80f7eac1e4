"""``python -m wame_dist.training`` as a script, for launchers that take a file (``deepspeed launch/train.py
--deepspeed_config configs/zero2.json``); see that module for the options and launchers."""

import sys

from wame_dist.training.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
