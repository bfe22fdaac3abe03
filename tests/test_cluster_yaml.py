"""cluster.yaml passes the Ray cluster launcher's own schema validation."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def test_cluster_yaml_is_valid_for_ray_up():
    cfg = yaml.safe_load(CLUSTER.read_text())
    prepared = prepare_config(cfg)  # fills defaults, as `ray up` does before validating
    validate_config(prepared)  # raises on a schema violation
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert "InstanceType" in prepared["available_node_types"]["gpu_worker"]["node_config"]
    assert any("kdsweep" in cmd and "pip install" in cmd for cmd in cfg["setup_commands"])


def test_validation_really_rejects_a_broken_config():
    cfg = yaml.safe_load(CLUSTER.read_text())
    cfg["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception, match="many"):
        validate_config(prepare_config(cfg))
