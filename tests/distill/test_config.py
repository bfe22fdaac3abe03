import pytest

from kdsweep.distill.config import TrainConfig, config_from_dict, load_config, parse_overrides
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = TrainConfig()
    assert config_from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.yaml"
    from kdsweep.distill.config import dump_config

    dump_config(cfg.replace(lr=3e-4, smoothing=0.05), path, header="provenance here")
    back = load_config(path)
    assert back.lr == 3e-4 and back.smoothing == 0.05
    assert path.read_text().startswith("# provenance here")


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"learning_rate": 1e-3}, "learning_rate: unknown key (did you mean 'lr'?"),
        ({"lr": -1e-3}, "lr: got -0.001, allowed: a finite number > 0"),
        ({"alpha": 1.5}, "alpha: got 1.5, allowed: 0 <= alpha <= 1"),
        ({"alpha": -0.1}, "alpha"),
        ({"smoothing": 2.0}, "smoothing"),
        ({"precision": "fp8"}, "precision: got 'fp8', allowed: one of 'auto', 'fp32', 'bf16', 'fp16'"),
        ({"max_steps": "many"}, "max_steps: got 'many', allowed: an integer"),
        ({"uncertainty": "yes"}, "uncertainty: got 'yes', allowed: true or false"),
        ({"split": [0.5, 0.5]}, "split"),
        ({"split": [0.9, 0.2, 0.1]}, "summing to 1"),
        ({"split_method": "random"}, "split_method: got 'random', allowed: one of 'cluster', 'hash'"),
        ({"cluster_identity": 0}, "cluster_identity: got 0.0, allowed: 0 < cluster_identity <= 1"),
        ({"cluster_coverage": 1.5}, "cluster_coverage: got 1.5, allowed: 0 <= cluster_coverage <= 1"),
        ({"batch_size": 10, "micro_batch_size": 4}, "not a whole multiple"),
        ({"scale": "huge"}, "scale: unknown scale 'huge'"),
        ({"scale": None}, "scale: null requires n_layer, n_head and n_embd"),
        ({"scale": None, "n_layer": 1, "n_head": 3, "n_embd": 16}, "not divisible by n_head"),
    ],
)
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert needle in str(e.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"lr": 0, "alpha": 2, "bogus": 1})
    # unknown keys are reported first; fix them and range errors follow together
    assert "bogus" in str(e.value)
    with pytest.raises(ConfigError) as e:
        config_from_dict({"lr": 0, "alpha": 2})
    msg = str(e.value)
    assert "lr:" in msg and "alpha:" in msg


def test_overrides_are_yaml_values():
    raw = parse_overrides(["lr=1e-3", "smoothing=null", "uncertainty=true", "scale=tiny"])
    assert raw == {"lr": "1e-3", "smoothing": None, "uncertainty": True, "scale": "tiny"}
    cfg = config_from_dict(raw)  # YAML 1.1 reads 1e-3 as a string; the config accepts it as a number
    assert (cfg.lr, cfg.smoothing, cfg.uncertainty, cfg.scale) == (1e-3, None, True, "tiny")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["lr"])


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(lst)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_split_defaults_are_the_cluster_split():
    assert SplitSpec.from_config(TrainConfig()) == SplitSpec(method="cluster", identity=0.5, coverage=0.8)
