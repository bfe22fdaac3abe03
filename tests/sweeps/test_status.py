"""`kdsweep sweep status`: the table heads its columns with the trial states' own names."""

from distill.rundir import RESTARTED, RunLog
from sweeps.status import format_status, sweep_status
from sweeps.study import PENDING, TRIAL_STATES
from tests.fixtures import write_finished_sweep


def test_status_columns_are_the_state_vocabulary(tmp_path):
    rows = sweep_status(write_finished_sweep(tmp_path))
    head, row = format_status(rows).splitlines()
    assert head.split()[:8] == ["study", "planned", PENDING, *TRIAL_STATES]
    assert row.split()[:8] == ["demo-xs/baseline", "3", "1", "0", "1", "1", "0", "0"]
    assert {k: rows[0][k] for k in (PENDING, *TRIAL_STATES)} == {
        "pending": 1, "running": 0, "stopped_early": 1, "completed": 1, "diverged": 0, "failed": 0}


def test_a_trial_restarted_from_step_0_is_counted_as_such(tmp_path):
    sd = write_finished_sweep(tmp_path)
    assert sweep_status(sd)[0][RESTARTED] == 0
    # t1 was handed a checkpoint that was not on disk (tests/distill/test_train.py writes this row for real)
    RunLog(sd.run_dir("t1")).append({"event": RESTARTED, "step": 0, "lost_step": 8, "checkpoints": "/efs/x/runs/t1/checkpoints"})
    rows = sweep_status(sd)
    assert rows[0][RESTARTED] == 1
    head, row = format_status(rows).splitlines()
    assert row.split()[head.split().index(RESTARTED)] == "1"
