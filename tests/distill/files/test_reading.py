"""The one reader of a user's config and space files (distill/files/reading.py)."""

from __future__ import annotations

import pytest
import yaml

from kdsweep.distill.errors import ConfigError
from kdsweep.distill.files.reading import MAX_YAML_NODES, UTF8_BOM, expanded_size, load_yaml, read_text


def test_a_byte_order_mark_is_accepted_and_dropped(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(UTF8_BOM + "lr: 0.001\ndescription: café\n".encode())
    assert read_text(path, "config file") == "lr: 0.001\ndescription: café\n"


def test_a_bad_byte_is_named_by_its_offset_in_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(UTF8_BOM + b"a: 1\nb: \x80\n")
    with pytest.raises(ConfigError, match=r"byte 0x80 at byte offset 11 \(line 2\)"):
        read_text(path, "config file")


def test_anchors_and_aliases_a_person_writes_still_work():
    doc = load_yaml("base: &d {type: uniform, low: 1.0, high: 2.0}\nparams:\n  temperature: *d\n"
                    "  alpha: {<<: *d, low: 0.1, high: 0.9}\n", "space")
    assert doc["params"]["temperature"] == {"type": "uniform", "low": 1.0, "high": 2.0}
    assert doc["params"]["alpha"] == {"type": "uniform", "low": 0.1, "high": 0.9}


def test_expanded_size_counts_every_value_an_alias_stands_for():
    node = yaml.compose("a: &x [1, 2]\nb: [*x, *x]\n")
    # mapping 1 + keys a, b 2 + [1, 2] 3 + [*x, *x] 1 + 2 x 3 = 13
    size, anchor = expanded_size(node, 100)
    assert size == 13 and anchor.start_mark.line == 0
    assert expanded_size(node, 12)[0] is None
    assert expanded_size(yaml.compose("[1, 2, 3]"), 100) == (4, None)


def _bomb(levels: int) -> str:
    """`levels` levels of ten aliases each: 10**levels values at the top."""
    return "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, levels))


def test_aliases_are_allowed_up_to_the_cap_and_a_bomb_is_refused():
    assert MAX_YAML_NODES == 100_000
    assert len(load_yaml(_bomb(4), "space")) == 4  # 12,349 values: fine
    with pytest.raises(ConfigError, match="more than 100,000 values once its anchors and aliases are expanded"):
        load_yaml(_bomb(5), "space")  # 123,461 values
    with pytest.raises(ConfigError, match="more than 100,000 values once its anchors and aliases are expanded"):
        load_yaml(_bomb(9), "space")  # 1.1 billion: refused as fast


def test_an_alias_inside_its_own_anchor_is_refused():
    with pytest.raises(ConfigError, match="an alias sits inside its own anchor"):
        load_yaml("a: &a [1, *a]\n", "space")


def test_a_document_of_too_many_values_is_refused_without_aliases_too():
    with pytest.raises(ConfigError, match=r"holds more than 100,000 values; write them out, or fewer"):
        load_yaml("[" + "0, " * 150_000 + "0]", "space")


def test_a_yaml_error_is_one_line_with_its_place():
    with pytest.raises(ConfigError) as e:
        load_yaml("a: 1\nb: [1, 2\nc: 3\n", "c.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("c.yaml: malformed YAML: ")
    assert "(line 3, column 2)" in str(e.value)
