"""User-facing errors. The CLI prints their message (no traceback) and exits 2."""


class KDSweepError(Exception):
    """Base class of every error caused by the user's input, not by a bug."""


class ConfigError(KDSweepError):
    """A config or search-space file is malformed or holds a bad value."""


class DataError(KDSweepError):
    """A data file is missing, malformed, empty, or holds invalid sequences."""


class ModelError(KDSweepError):
    """A teacher/student/tokenizer cannot be loaded or does not match."""
