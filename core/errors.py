"""User-facing errors: one line that says what was wrong, where, and what to do;
and warnings, for what l2obench works around on its own."""
import warnings


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


class MetaTrainingError(L2OError):
    """A meta-training produced no trained optimizer (no finite meta-loss, or nothing better
    than its initialisation on the validation tasks)."""


class L2OWarning(UserWarning):
    """Something l2obench works around (e.g. running without its compiled kernel)."""


def one_line_warnings() -> None:
    """Show :class:`L2OWarning` as ``l2obench: warning: ...`` on one line (the command
    and its workers do this); other warnings keep Python's format."""
    if getattr(warnings.formatwarning, "l2obench", False):
        return
    python_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, L2OWarning):
            return f"l2obench: warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    format_warning.l2obench = True
    warnings.formatwarning = format_warning


def did_you_mean(name: object, known) -> str:
    """``"did you mean 'adam'? "`` for the closest of ``known`` to ``name``, or ``""``:
    the hint every "unknown ..." message carries, written once."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f"did you mean {close[0]!r}? " if close else ""
