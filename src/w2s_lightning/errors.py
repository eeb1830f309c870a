"""The project's errors: each message names the bad value, the choices and the fix."""


class W2SError(Exception):
    """Base class; run.py prints these without a traceback."""


class ConfigError(W2SError, ValueError):
    """A config value is unknown or inconsistent."""


class DataError(W2SError, ValueError):
    """Task data is missing or unusable."""


class ModelError(W2SError, ValueError):
    """A model cannot be found or built."""


class TrainingError(W2SError, RuntimeError):
    """Training diverged (NaN or infinite loss)."""


class CacheError(W2SError, OSError):
    """The stage cache or the zoo cannot be written (a full disk, a read-only folder)."""
