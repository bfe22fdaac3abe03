"""A sweep folder's name, and reading a sweep whose folder was renamed (sweeps/layout.py)."""

from __future__ import annotations

import optuna
import pytest

from kdsweep.distill.errors import ConfigError
from kdsweep.cli import main
from kdsweep.sweeps.layout import SweepDir, check_sweep_name
from kdsweep.sweeps.status import sweep_status
from kdsweep.sweeps.study import open_study
from tests.fixtures import write_finished_sweep


@pytest.mark.parametrize("name", ["demo", "demo-smoke", "run_2.1", "9", "a" * 100])
def test_names_that_are_one_folder_are_accepted(name):
    assert check_sweep_name(name, "--name") == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/abs", "a/b", "a\\b", ".hidden", "-x", "a b", "a:b", "a" * 101,
                                  None, 5])
def test_anything_else_is_refused(name):
    with pytest.raises(ConfigError, match="is not a sweep name"):
        check_sweep_name(name, "--name")


def test_a_renamed_sweep_folder_reads_its_own_studies(tmp_path, capsys):
    """Study names come from sweep.json: before, a renamed folder showed every trial pending and wrote
    empty studies under the new name into the database."""
    sd = write_finished_sweep(tmp_path / "store")
    renamed = SweepDir(tmp_path / "store" / "renamed")
    sd.root.rename(renamed.root)
    assert (renamed.name, renamed.folder) == ("norays", "renamed")
    [row] = sweep_status(renamed)
    assert (row["completed"], row["stopped_early"], row["pending"], row["best_objective"]) == (1, 1, 1, 19.5)
    assert main(["sweep", "status", "renamed", "--storage", str(tmp_path / "store")]) == 0
    assert "19.5000" in capsys.readouterr().out
    assert optuna.get_all_study_names(f"sqlite:///{renamed.default_db}") == ["norays:demo-xs/baseline"]
    assert [t.value for t in open_study(renamed.storage_url(), "norays", "demo-xs/baseline").get_trials()] == [19.5, None]


def test_reading_a_sweep_never_creates_a_study(tmp_path):
    """A study of the space with no trial yet reads as pending without being written."""
    sd = write_finished_sweep(tmp_path / "store")
    space = sd.space.read_text().replace("arms:\n- baseline", "arms:\n- baseline\n- uncertainty")
    sd.space.write_text(space)
    rows = sweep_status(sd)
    assert [(r["study"], r["pending"]) for r in rows] == [("demo-xs/baseline", 1), ("demo-xs/uncertainty", 3)]
    assert optuna.get_all_study_names(f"sqlite:///{sd.default_db}") == ["norays:demo-xs/baseline"]
