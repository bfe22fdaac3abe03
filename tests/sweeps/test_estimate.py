"""`kdsweep estimate`: the ASHA model, the FLOP split, and a bill consistent with its inputs on every shipped space."""

import json
import math

import pytest
import torch
import yaml

from kdsweep.distill.errors import ConfigError
from kdsweep.cli import main
from kdsweep.sweeps.asha_model import expected_asha_steps, report_steps, rungs, simulate, without_early_stopping
from kdsweep.sweeps.estimate import Throughput, estimate, flop_split, format_estimate, parse_tokens_per_s, probe_shape
from kdsweep.sweeps.space import SEARCH_SPACES_DIR, load_space, parse_space

SHIPPED = sorted(SEARCH_SPACES_DIR.glob("*.yaml"))


def test_rungs_and_reports_follow_ray():
    assert rungs(40, 10, 2) == [10, 20, 40]
    assert rungs(3052, 600, 3) == [600, 1800]
    assert rungs(10, 20, 2) == [10]  # grace capped at max_t, as PerStudyASHA does
    assert report_steps(40, 5)[-1] == 40 and report_steps(45, 10) == [10, 20, 30, 40, 45]


def test_simulated_ray_rule():
    # Each trial better than all before it: nobody is stopped.
    assert simulate([0.1, 0.2, 0.3, 0.4], 40, 5, 10, 2) == [40] * 4
    # Each trial worse than all before it: every trial after the first stops at the first rung.
    assert simulate([0.4, 0.3, 0.2, 0.1], 40, 5, 10, 2) == [40, 10, 10, 10]
    # Stopped at the first report at or past a rung when reports do not fall on it.
    assert simulate([0.4, 0.3], 40, 15, 10, 2) == [40, 15]


def test_expected_steps_shrink_with_more_trials_and_tend_to_halving():
    few, many = expected_asha_steps(3, 40, 5, 10, 2), expected_asha_steps(64, 40, 5, 10, 2)
    assert 0 < many.fraction < few.fraction < 1
    # Textbook limit for rungs 10 and 20 of 40 at rf 2: 10 + 10/2 + 20/4 = 20 steps a trial, half the budget.
    assert many.fraction == pytest.approx(0.5, abs=0.08)
    assert without_early_stopping(3, 40).fraction == 1 and without_early_stopping(3, 40).expected_stopped == 0


def test_flop_split_reproduces_the_given_figure():
    t = flop_split(1000.0, student_flops=6e8, teacher_flops=2e9, eval_flops=2e8)
    assert t.live_step == pytest.approx(1000.0)
    assert t.teacher / t.student_step == pytest.approx(6e8 / 2e9)  # the teacher's share is its FLOPs' share
    assert t.eval_forward == pytest.approx(1000.0 * 2.6e9 / 2e8)


def test_tokens_per_s_forms():
    assert parse_tokens_per_s(["5000"], ["tiny", "small"]) == {"tiny": 5000.0, "small": 5000.0}
    assert parse_tokens_per_s(["900", "small=40"], ["tiny", "small"]) == {"tiny": 900.0, "small": 40.0}
    for bad in (["huge=3"], ["tiny=0"], ["fast"]):
        with pytest.raises(ConfigError):
            parse_tokens_per_s(bad, ["tiny", "small"])


def test_cpu_probe_is_sized_by_flops():
    cpu = torch.device("cpu")
    assert probe_shape(1e6, 8, 256, cpu) == (8, 256)  # a demo model: the trial's own micro-batch
    assert probe_shape(1.5e9, 8, 512, cpu) == (1, 64)  # ProtGPT2: a short probe
    assert probe_shape(1.5e9, 8, 512, torch.device("cuda")) == (8, 512)


def _consistent(est, space):
    train = space.train
    for row in est.scales:
        assert row.tokens_per_trial == row.steps_per_trial * train["batch_size"] * train["block_size"]
        assert row.trial_steps == pytest.approx(row.studies * row.asha.expected_steps)
        assert row.train_tokens == pytest.approx(row.trial_steps * train["batch_size"] * train["block_size"])
        # The cached step skips the teacher's forward, and nothing else differs.
        saved = row.train_tokens / row.throughput.live_step - row.train_tokens / row.throughput.student_step
        assert row.device_s_live - row.device_s_cached == pytest.approx(saved)
        assert row.throughput.live_step < row.throughput.student_step
    speed = est.scales[0].throughput
    assert speed.build_train > 0 and speed.build_heldout > 0  # (two timings: never compared in a test)
    # The pool's tokens get the forward and the entropies, the held-out proteins the forward alone.
    pool = est.cache_pool_tokens
    assert pool == min(pool, est.scales[0].steps_per_trial * train["batch_size"] * train["block_size"])
    assert est.cache_build_s == pytest.approx(pool / speed.build_train + (est.cache_tokens - pool) / speed.build_heldout)
    assert est.device_s_cached == pytest.approx(est.cache_build_s + sum(r.device_s_cached for r in est.scales))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_space_gets_a_consistent_bill(path):
    space = load_space(path)
    est = estimate(space, tokens_per_s=["2000"], device="cpu")
    assert [r.scale for r in est.scales] == list(space.scales)
    assert sum(r.trials for r in est.scales) == space.total_trials
    _consistent(est, space)
    for row in est.scales:
        assert row.throughput.live_step == pytest.approx(2000.0)
        assert 0 < row.asha.fraction < 1  # every shipped space early-stops
    text = format_estimate(est)
    assert "total" in text and "teacher cache" in text and "nothing was launched" in text


def test_protgpt2_cache_is_sized_from_its_width():
    space = load_space(SEARCH_SPACES_DIR / "protgpt2.yaml")
    est = estimate(space, tokens_per_s=["5000"], device="cpu")
    # Stored in the space's cache.dtype (bf16), whatever the trials' precision (fp32 on this CPU):
    # 1280 values of 2 bytes per token; fp32 entropies for the train tokens, and the fp32 head.
    assert space.cache["dtype"] == "bf16"
    train_tokens = 5538 * 512
    assert est.cache_tokens > train_tokens  # the pool, and the val/test proteins
    held = est.cache_tokens - train_tokens
    assert est.cache_bytes == (train_tokens + held) * 1280 * 2 + 5538 * 511 * 4 + 50257 * 1280 * 4
    # Its teacher (774M) is most of a live tiny step's FLOPs.
    tiny = est.scales[0].throughput
    assert tiny.student_step > 2 * tiny.live_step


def test_without_early_stopping_every_trial_trains_its_budget():
    raw = load_space(SEARCH_SPACES_DIR / "demo.yaml").raw
    space = parse_space({**raw, "search": {**raw["search"], "early_stopping": False}}, "demo.yaml")
    est = estimate(space, tokens_per_s=["2000"], device="cpu")
    for row in est.scales:
        assert row.trial_steps == row.trials * row.steps_per_trial
    _consistent(est, space)


def test_probe_on_the_demo_space():
    space = load_space(SEARCH_SPACES_DIR / "demo.yaml")
    est = estimate(space, device="cpu")
    _consistent(est, space)
    for row in est.scales:
        t: Throughput = row.throughput
        assert all(math.isfinite(x) and x > 0 for x in (t.student_step, t.teacher, t.eval_forward))
        assert t.source.startswith("probe on cpu (1 threads")  # a demo trial's cpus_per_worker
        # The cache's train blocks are priced at the forward with the entropies: the same probe as the
        # live teacher of the demo's uncertainty arms (the held-out proteins at the forward alone).
        assert t.build_train == t.teacher


def test_cli_estimate_json(capsys):
    assert main(["estimate", "demo", "--tokens-per-s", "1500", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["space"] == "demo" and len(out["scales"]) == 2 and out["device_s_live"] > out["device_s_cached"] > 0


def _unknown_teacher_space(tmp_path):
    raw = load_space(SEARCH_SPACES_DIR / "demo.yaml").raw
    path = tmp_path / "absent.yaml"
    path.write_text(yaml.safe_dump({**raw, "teacher": "nobody/absent-teacher", "teacher_train_data": None}))
    return str(path)


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--tokens-per-s", "demo-xl=3"], "'demo-xl' is not a scale of this space (demo-xs, demo-s)"),
    (["demo", "--tokens-per-s", "fast"], "expected a number > 0, or SCALE=NUMBER"),
    (["demo", "--devices", "0"], "--devices: got 0, allowed: an integer >= 1"),
    (["no-such-space"], "no-such-space: search space file not found"),
    ([_unknown_teacher_space, "--tokens-per-s", "100"], "'nobody/absent-teacher': no local config to estimate from"),
])
def test_cli_estimate_bad_input_exits_2(argv, needle, capsys, tmp_path):
    argv = [a(tmp_path) if callable(a) else a for a in argv]
    assert main(["estimate", *argv]) == 2
    captured = capsys.readouterr()
    assert needle in captured.err and captured.out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cli_estimate_cuda_without_a_gpu(capsys):
    assert main(["estimate", "demo", "--device", "cuda"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_durations_and_sizes_read_plainly():
    from kdsweep.sweeps.estimate import duration, size

    assert [duration(s) for s in (12, 600, 3 * 3600, 44.8 * 3600, 71_300 * 3600)] == \
        ["12 s", "10.0 min", "3.00 h", "44.8 h", "71,300 h"]
    assert [size(n) for n in (8.2e8, 2.4e9, 1.5e12)] == ["820 MB", "2.4 GB", "1,500 GB"]


def _demo_raw(**changes):
    raw = load_space(SEARCH_SPACES_DIR / "demo.yaml").raw
    return {**raw, **{k: {**raw.get(k, {}), **v} for k, v in changes.items()}}


def test_the_bill_prices_start_up_reports_and_verification_and_prints_aligned(monkeypatch):
    from kdsweep.sweeps import estimate as est_mod

    space = parse_space(_demo_raw(), "demo.yaml")
    est = estimate(space, tokens_per_s=["2000"], device="cpu")
    m = est.machine
    assert m.process_s > 0 and m.setup_s > 0 and m.sha256_bytes_per_s > 0 and m.write_bytes_per_s > 0
    for row in est.scales:  # local executor: the trial's process is reused, so no process start per trial
        assert row.overhead_s_per_trial == pytest.approx(m.setup_s + est_mod.TUNE_TRIAL_S)
        assert row.report_s == pytest.approx(row.checkpoint_bytes / m.write_bytes_per_s + est_mod.TUNE_REPORT_S)
        assert row.checkpoint_bytes_per_trial == row.checkpoint_bytes * 8  # 40 steps, a report every 5
    assert est.verify_s == pytest.approx(est.cache_bytes / m.sha256_bytes_per_s)
    assert est.wall_s(cached=True) == pytest.approx(est.startup_s + est.verify_s + est.device_s_cached / est.concurrency)
    ray_train = estimate(parse_space(_demo_raw(search={"executor": "ray_train"}), "d.yaml"), tokens_per_s=["2000"],
                         device="cpu")
    extra = ray_train.scales[0].overhead_s_per_trial - est.scales[0].overhead_s_per_trial
    assert extra == pytest.approx(est_mod.EXECUTOR_EXTRA_S["ray_train"] + ray_train.machine.process_s
                                  + ray_train.machine.setup_s - m.setup_s)
    text = format_estimate(est)
    assert "e+" not in text
    # the per-trial start-up is printed as the sum of what it adds up
    assert (f"{est.scales[0].overhead_s_per_trial:.0f} s of start-up (set-up {m.setup_s:.0f} s, Tune "
            f"{est_mod.TUNE_TRIAL_S:g} s; set-up and process start measured now; trials reuse their process") in text
    ray_text = format_estimate(ray_train)
    assert (f"(set-up {ray_train.machine.setup_s:.0f} s, process start {ray_train.machine.process_s:.0f} s, Tune "
            f"{est_mod.TUNE_TRIAL_S:g} s, the ray_train executor {est_mod.EXECUTOR_EXTRA_S['ray_train']:g} s;") in ray_text
    assert "reuse" not in ray_text
    table = text.splitlines()[1:5]  # header, two scales, total
    assert len({len(line) for line in table}) == 1  # aligned: every row as wide as the header
    for col in ("trials", "device cached"):
        end = table[0].index(col) + len(col)
        assert all(line[end - 1] != " " for line in table[1:3])  # right-aligned under its header


def test_a_gpu_space_priced_on_a_cpu_says_so_and_how(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the note of a machine without a GPU")
    space = parse_space(_demo_raw(resources={"gpus_per_worker": 0.5, "cpus_per_worker": 64}), "gpu.yaml")
    est = estimate(space, device="cpu")
    text = format_estimate(est)
    assert "this space trains on GPUs" in text and "--device cuda" in text
    assert "--tokens-per-s demo-xs=N --tokens-per-s demo-s=N" in text
    # The probe's threads never exceed the machine's cores.
    from kdsweep.sweeps.estimate import cores

    assert all(f"probe on cpu ({cores()} threads" in row.throughput.source for row in est.scales)
    assert f"resources.cpus_per_worker is 64 but this machine has {cores()} cores" in text
    # With the GPU's figures given, it is the GPU's bill: no such note.
    given = estimate(space, tokens_per_s=["5000"], device="cpu")
    assert "this space trains on GPUs" not in format_estimate(given)
