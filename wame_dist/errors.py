"""The one exception type for bad input: a message that says what to change, shown without a traceback."""


class BadInput(ValueError):
    """Wrong hyperparameters, configs, paths, world sizes or checkpoints, detected before work starts."""
