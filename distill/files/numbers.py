"""Numbers in files: parsing user-written numbers, and one JSON codec for non-finite floats.

JSON has no inf or NaN; Python's `json` would write the non-standard tokens
`Infinity`/`NaN` that strict readers (jq, JavaScript, pandas with some engines)
reject. Every JSON file kdsweep writes goes through `dumps`, which writes
non-finite floats as the strings "inf", "-inf" and "nan" (and refuses to emit
the non-standard tokens); `number` reads them back.
"""

from __future__ import annotations

import json
import math
from typing import Any


def parse_number(value: Any) -> float | None:
    """A YAML/JSON number as float, else None. Numeric strings count (PyYAML, a YAML 1.1 parser,
    reads `1e-3` as a string, and `dumps` writes inf as "inf"); booleans do not (YAML's `yes`
    is not 1)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return float(value) if isinstance(value, (int, float)) else None


def human_bytes(n: float) -> str:
    """Bytes as a message says them: '147 MB', '13.19 TB'."""
    for unit, size in (("TB", 1e12), ("GB", 1e9)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n / 1e6:.3g} MB"


def number(value: Any) -> float:
    """A logged value as float: what `parse_number` reads, NaN for anything else (None, text)."""
    x = parse_number(value)
    return math.nan if x is None else x


def encode(obj: Any) -> Any:
    """`obj` with every non-finite float (also inside lists/dicts) replaced by its string."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "inf", "-inf", "nan"
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """Standard JSON (no Infinity/NaN tokens); objects json cannot encode are written with str()."""
    return json.dumps(encode(obj), allow_nan=False, default=str, **kwargs)
