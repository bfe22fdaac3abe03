"""`kdsweep sweep status` and `sweep list`: the tables head their columns with the trial states' own
names, fit the terminal's width (or switch to a narrow layout), and an unknown sweep name lists the
sweeps there with a did-you-mean."""

import json
import shutil
from dataclasses import replace

import optuna
import pytest

from kdsweep.cli import main
from kdsweep.distill.errors import ConfigError
from kdsweep.distill.run.rundir import RESTARTED, RunLog
from kdsweep.sweeps.layout import SweepDir, open_sweep
from kdsweep.sweeps.status import format_status, format_sweep_list, list_sweeps, sweep_status
from kdsweep.sweeps.study import PENDING, TRIAL_STATES
from tests.fixtures import write_finished_sweep


def test_status_columns_are_the_state_vocabulary(tmp_path):
    rows = sweep_status(write_finished_sweep(tmp_path))
    head, row = format_status(rows).splitlines()
    assert head.split()[:9] == ["study", "planned", PENDING, *TRIAL_STATES, RESTARTED]
    assert head.split()[9:11] == ["best", "objective"]  # the best trial's objective: its final model's val_ppl
    assert row.split()[:11] == ["demo-xs/baseline", "3", "1", "0", "1", "1", "0", "0", "0", "19.5000", "t1"]
    assert {k: rows[0][k] for k in (PENDING, *TRIAL_STATES)} == {
        "pending": 1, "running": 0, "stopped_early": 1, "completed": 1, "diverged": 0, "failed": 0}
    assert rows[0]["best_objective"] == 19.5 and "best_val_ppl" not in rows[0]


@pytest.mark.parametrize("width", [80, 120, 200])
def test_status_fits_the_width(tmp_path, width):
    text = format_status(sweep_status(write_finished_sweep(tmp_path)), width)
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "demo-xs/baseline" in text and "19.5000" in text
    for state in TRIAL_STATES:  # every state's count, whole, in either layout
        assert state in text
    if width == 80:  # too narrow for a column per state: a block per study
        assert text.splitlines()[0].startswith("demo-xs/baseline:") and "stopped_early 1" in text
        assert "best objective 19.5000 (trial t1" in text and "lr=0.003" in text
    else:
        assert text.splitlines()[0].split()[:3] == ["study", "planned", PENDING]
    params = "lr=0.003 warmup_steps=2 temperature=2 alpha=0.5"
    if width == 200:
        assert params in text
    elif width == 80:  # whole, wrapped between params
        assert params.split() == text.split("(trial t1):")[1].split()
    else:
        assert params not in text  # cut (or dropped) to fit


def test_sweep_list_and_unknown_names(tmp_path, capsys):
    store = tmp_path / "store"
    sd = write_finished_sweep(store)
    copy = SweepDir(store / "norays-copy")  # the same sweep under another name
    shutil.copytree(sd.root, copy.root)
    copy.write_meta(replace(sd.meta(), name="norays-copy"))
    copy.default_db.unlink()
    optuna.copy_study(from_study_name="norays:demo-xs/baseline", from_storage=sd.storage_url(),
                      to_storage=copy.storage_url(create=True), to_study_name="norays-copy:demo-xs/baseline")
    (store / "not-a-sweep").mkdir()
    summaries = list_sweeps(store)
    assert [s.name for s in summaries] == ["norays", "norays-copy"]
    s = summaries[0]
    assert (s.studies, s.best, s.error) == (1, {"demo-xs": (19.5, "baseline")}, None)
    assert s.counts == {"planned": 3, PENDING: 1, "running": 0, "stopped_early": 1, "completed": 1, "diverged": 0,
                        "failed": 0, RESTARTED: 0}
    for width in (None, 200, 120, 80):
        text = format_sweep_list(summaries, store, width)
        assert "norays-copy" in text and "demo-xs 19.5000 (baseline)" in text
        head, *rest = text.splitlines()
        assert head == f"sweeps in {store}"  # a path is not folded (it may be longer than the width)
        assert width is None or all(len(line) <= width for line in rest), text
    assert main(["sweep", "list", "--storage", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == ["norays", "norays-copy"] and listed[0]["best"]["demo-xs"] == [19.5, "baseline"]

    # a sweep whose database is gone is listed with the reason, the others still are
    (store / "norays-copy" / "optuna.db").unlink()
    broken = [s for s in list_sweeps(store) if s.name == "norays-copy"][0]
    assert broken.error and "optuna" in broken.error.lower()

    with pytest.raises(ConfigError) as e:
        open_sweep("noray", str(store))
    assert "did you mean 'norays' or 'norays-copy'?" in str(e.value) and "sweeps there: norays, norays-copy" in str(e.value)
    assert main(["sweep", "status", "nothing-like-it", "--storage", str(store)]) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and "sweeps there: norays, norays-copy" in err and "sweep list" in err
    with pytest.raises(ConfigError, match="no sweeps in"):
        open_sweep("demo", str(tmp_path / "empty"))
    assert main(["sweep", "list", "--storage", str(tmp_path / "empty")]) == 0
    assert "no sweeps in" in capsys.readouterr().out


def test_a_trial_restarted_from_step_0_is_counted_as_such(tmp_path):
    sd = write_finished_sweep(tmp_path)
    assert sweep_status(sd)[0][RESTARTED] == 0
    # t1 was handed a checkpoint that was not on disk (tests/distill/run/test_train.py writes this row for real)
    RunLog(sd.run_dir("t1")).append({"event": RESTARTED, "step": 0, "lost_step": 8, "checkpoints": "/efs/x/runs/t1/checkpoints"})
    rows = sweep_status(sd)
    assert rows[0][RESTARTED] == 1
    head, row = format_status(rows).splitlines()
    assert row.split()[head.split().index(RESTARTED)] == "1"
