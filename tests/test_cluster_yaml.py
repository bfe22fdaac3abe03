"""cluster.yaml passes the Ray cluster launcher's own schema validation."""

import re
import subprocess
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


def _mount_command(cfg) -> str:
    [cmd] = [c for c in cfg["setup_commands"] if "mount" in c and "efs" in c]
    return cmd


def test_a_failed_shared_mount_fails_the_node_setup(tmp_path):
    """The mount line as `ray up` runs it (bash -c), with `sudo mount` failing and nothing mounted:
    it must exit non-zero (no `|| true` fallback to an empty local ~/efs)."""
    cfg = yaml.safe_load(CLUSTER.read_text())
    cmd = _mount_command(cfg)
    assert "|| true" not in " ".join(cfg["setup_commands"])
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, code in (("sudo", 32), ("mountpoint", 1)):  # mount(8) exits 32 on a failed mount
        (fake / name).write_text(f"#!/bin/sh\nexit {code}\n")
        (fake / name).chmod(0o755)
    env = {"HOME": str(tmp_path), "PATH": f"{fake}:/usr/bin:/bin"}
    assert subprocess.run(["bash", "-c", cmd], env=env).returncode != 0
    (fake / "mountpoint").write_text("#!/bin/sh\nexit 0\n")  # mounted: the same line succeeds
    assert subprocess.run(["bash", "-c", cmd], env=env).returncode == 0


def test_the_nodes_install_every_extra_the_cluster_docs_use():
    """Every extra docs/cluster.md names (`kdsweep[...]`; the PostgreSQL URL it requires needs
    `postgres`; `--tracker X` needs X) is installed on every node."""
    cfg = yaml.safe_load(CLUSTER.read_text())
    [install] = [c for c in cfg["setup_commands"] if "pip install -e" in c]
    extras = set(install.split("[")[1].split("]")[0].split(","))
    docs = (CLUSTER.parent / "docs" / "cluster.md").read_text()
    named = {e for group in re.findall(r"kdsweep\[([\w,-]+)\]", docs) for e in group.split(",")}
    named |= set(re.findall(r"--tracker (mlflow|wandb)", docs))
    named |= {"postgres"} if "postgresql+psycopg://" in docs else set()
    assert {"cluster", "postgres", "mlflow", "wandb"} <= named  # the docs still say what this test reads
    assert named <= extras, f"cluster.yaml's nodes lack {named - extras}"
