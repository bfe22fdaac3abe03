"""distill.files.numbers: user-written numbers, and JSON that never holds Infinity/NaN tokens."""

import json
import math

import pytest

from kdsweep.distill.files.numbers import dumps, number, parse_number


@pytest.mark.parametrize("raw, expected", [(3, 3.0), (2.5, 2.5), ("1e-3", 1e-3), ("inf", math.inf), (" 7 ", 7.0)])
def test_parse_number_reads_numbers_and_numeric_strings(raw, expected):
    assert parse_number(raw) == expected


@pytest.mark.parametrize("raw", [True, False, None, "abc", [1], {"a": 1}])
def test_parse_number_refuses_the_rest(raw):
    assert parse_number(raw) is None
    assert math.isnan(number(raw))


def test_dumps_writes_standard_json_and_number_reads_it_back():
    obj = {"a": math.inf, "b": [-math.inf, 1.5, math.nan], "c": {"d": math.nan}, "e": "text", "f": None}
    text = dumps(obj)
    assert "Infinity" not in text and "NaN" not in text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard token {c}"))
    assert number(back["a"]) == math.inf and number(back["b"][0]) == -math.inf
    assert number(back["b"][1]) == 1.5 and math.isnan(number(back["b"][2])) and math.isnan(number(back["c"]["d"]))
    assert back["e"] == "text" and back["f"] is None
