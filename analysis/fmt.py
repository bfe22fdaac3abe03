"""How numbers print in every table, caption and warning: one rule, so columns read alike.

* A value with an uncertainty (a std over seeds, an interval) prints to the precision the
  uncertainty allows: the uncertainty to 2 significant digits, the value rounded at the same
  decimal place ("1.1850 ± 0.0015", not "1.185 ± 0.00148").
* A value without one prints with 4 significant digits.
* A value that is the same in every run (compression of one scale) prints without a "± 0":
  its cell says "constant".
"""

from __future__ import annotations

import math

SIG = 4  # significant digits of a value that has no uncertainty beside it
MAX_SIG = 6  # never more digits than this for a value, however small its uncertainty


def is_nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def sig(x: float, digits: int = SIG) -> str:
    """`digits` significant digits ('1.185', '0.09499', '2.1e-05')."""
    return "nan" if is_nan(x) else f"{x:.{digits}g}"


def decimals_for(uncertainty: float, value: float) -> int:
    """Decimal places that show `uncertainty` to 2 significant digits, capped so `value` shows at most
    MAX_SIG significant digits (may be negative: round to tens, hundreds)."""
    d = 1 - math.floor(math.log10(uncertainty))
    if value:
        d = min(d, MAX_SIG - 1 - math.floor(math.log10(abs(value))))
    return d


def fixed(x: float, d: int) -> str:
    """x rounded at decimal place d (d < 0 rounds to tens, hundreds, ...)."""
    r = round(x, d) + 0.0  # + 0.0 turns -0.0 into 0.0: no "-0.00"
    return f"{r:.{d}f}" if d > 0 else f"{r:.0f}"


def mean_pm(mean: float, std: float) -> str:
    """'mean ± std' at the std's precision (std > 0; a constant prints as `sig(mean)`, say so beside it)."""
    if not std > 0:
        return sig(mean)
    d = decimals_for(std, mean)
    # a std below the value's 6th digit would round to zeros: show its own 2 digits instead
    return f"{fixed(mean, d)} ± {fixed(std, d) if round(std, d) else sig(std, 2)}"


def with_interval(mean: float, lo: float, hi: float) -> str:
    """'mean [lo, hi]' at the precision of the interval's half-width."""
    half = (hi - lo) / 2
    if not half > 0:
        return sig(mean)
    d = decimals_for(half, mean if mean else half)
    return f"{fixed(mean, d)} [{fixed(lo, d)}, {fixed(hi, d)}]"
