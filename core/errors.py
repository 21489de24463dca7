"""User-facing errors: one line that says what was wrong, where, and what to do."""


class L2OError(Exception):
    """Base of every error the CLI reports as a single line instead of a traceback."""


class ConfigError(L2OError, ValueError):
    """A task config, hyperparameter, suite file or CLI argument is invalid."""


class PluginError(L2OError):
    """A plugin failed to load, registered a clash, or broke a hook contract."""


class CheckpointError(L2OError):
    """A checkpoint is missing, truncated, tampered with or does not match its plugin."""


class DataError(L2OError):
    """A data set file is missing or corrupted."""
