"""User-facing errors. The CLI prints their message (no traceback) and exits 2."""

from __future__ import annotations

from typing import Iterable


class KDSweepError(Exception):
    """Base class of every error caused by the user's input, not by a bug."""


class ConfigError(KDSweepError):
    """A config or search-space file is malformed or holds bad values.

    Carries every problem found (`problems`, one line each, each naming its key),
    so a caller that validates a nested section can re-prefix and merge them
    instead of parsing the message back apart. `str()` is what the user reads.
    """

    def __init__(self, problems: str | Iterable[str], source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.source is None and len(self.problems) == 1:
            return self.problems[0]
        head = f"invalid {self.source}:" if self.source else "invalid input:"
        return head + "".join(f"\n  - {p}" for p in self.problems)


class DataError(KDSweepError):
    """A data file is missing, malformed, empty, or holds invalid sequences."""


class ModelError(KDSweepError):
    """A teacher/student/tokenizer cannot be loaded or does not match."""
