"""User-facing errors. The CLI prints their message (no traceback) and exits 2."""

from __future__ import annotations

import reprlib
from typing import Any, Iterable

# What a message may quote of a value a user wrote: a 5 MB string or a YAML alias bomb
# (a few KB expanding to millions of nodes) must not become a 43 MB message or a MemoryError.
SHOWN_CHARS = 200
_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = SHOWN_CHARS, SHOWN_CHARS, 40
# A message lists at most this many problems, and cuts each at this many characters.
MAX_PROBLEMS, MAX_PROBLEM_CHARS = 20, 1000


def shown(value: Any) -> str:
    """`repr(value)` cut to at most SHOWN_CHARS characters (nested containers summarised with ...)."""
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


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
        lines = [p if len(p) <= MAX_PROBLEM_CHARS else p[: MAX_PROBLEM_CHARS - 3] + "..."
                 for p in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(self.problems) - MAX_PROBLEMS} more problems")
        if self.source is None and len(lines) == 1:
            return lines[0]
        head = f"invalid {self.source}:" if self.source else "invalid input:"
        return head + "".join(f"\n  - {p}" for p in lines)


class DataError(KDSweepError):
    """A data file is missing, malformed, empty, or holds invalid sequences."""


class ModelError(KDSweepError):
    """A teacher/student/tokenizer cannot be loaded or does not match."""
