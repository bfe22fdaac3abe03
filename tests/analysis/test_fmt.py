"""One number format: a value to the precision of its uncertainty, 4 digits alone, no "± 0"."""

from __future__ import annotations

import math

import pandas as pd

from kdsweep.analysis.fmt import mean_pm, sig, with_interval
from kdsweep.analysis.tables import cell_of


def test_value_prints_to_the_precision_of_its_uncertainty():
    assert mean_pm(1.185, 0.00148) == "1.1850 ± 0.0015"
    assert mean_pm(0.223, 0.552) == "0.22 ± 0.55"
    assert mean_pm(1234.5, 123.0) == "1230 ± 120"
    assert mean_pm(0.09499, 5.56e-06) == "0.0949900 ± 0.0000056"
    assert mean_pm(0.1, 1e-9) == "0.100000 ± 1e-09"  # never more than 6 digits of the value
    assert with_interval(-0.0081, -0.0150, -0.0012) == "-0.0081 [-0.0150, -0.0012]"
    assert with_interval(0.002, -0.05, 0.054) == "0.002 [-0.050, 0.054]"
    assert sig(0.094987) == "0.09499" and sig(math.nan) == "nan"


def test_cells_say_constant_and_no_spread_never_plus_minus_zero():
    assert cell_of(pd.Series([20.19] * 12)).text() == "20.19 (n=12, constant)"
    assert cell_of(pd.Series([1.185])).text() == "1.185 (n=1, no spread)"
    assert cell_of(pd.Series([1.184, 1.186])).text() == "1.1850 ± 0.0014 (n=2)"
    assert "± 0 " not in cell_of(pd.Series([0.5, 0.5 + 1e-15])).text()
