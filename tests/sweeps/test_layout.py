"""A sweep folder's name, and reading a sweep whose folder was renamed (sweeps/layout.py)."""

from __future__ import annotations

import json

import optuna
import pytest

from kdsweep.distill.errors import ConfigError
from kdsweep.cli import main
from kdsweep.sweeps.layout import SweepDir, SweepMeta, check_sweep_name
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


def test_sweep_json_of_an_older_version_reads_with_defaults_and_keeps_unknown_keys(tmp_path):
    sd = SweepDir(tmp_path / "old")
    sd.root.mkdir()
    sd.meta_path.write_text(json.dumps({"name": "old", "storage_url": None, "git_commit": "abc", "later": [1, 2]}))
    meta = sd.meta()
    assert (meta.name, meta.git_commit, meta.teacher_cache, meta.ray_address, meta.replicate_seeds, meta.ablations) \
        == ("old", "abc", None, None, 0, False)
    sd.update_meta(state="finished", replicate_seeds=3)
    on_disk = json.loads(sd.meta_path.read_text())
    assert on_disk["later"] == [1, 2]  # a newer kdsweep's key survives a rewrite by this one
    assert (on_disk["name"], on_disk["git_commit"], on_disk["state"], on_disk["replicate_seeds"]) == \
        ("old", "abc", "finished", 3)
    assert SweepMeta.from_json(on_disk) == sd.meta()


def test_sweep_json_holds_every_field_under_its_own_name(tmp_path):
    sd = SweepDir(tmp_path / "new")
    sd.root.mkdir()
    meta = SweepMeta(name="new", created="2026-12-02T11:00:00+0000", git_commit="abc", storage_url="sqlite:///x.db",
                     executor="local", source="space.yaml", total_trials=8, state="running", teacher_cache="/c")
    sd.write_meta(meta)
    on_disk = json.loads(sd.meta_path.read_text())
    assert list(on_disk)[:9] == ["name", "created", "git_commit", "storage_url", "executor", "source", "total_trials",
                                 "state", "teacher_cache"]  # the keys and order of earlier versions' files
    assert on_disk["teacher_cache"] == "/c" and on_disk["total_trials"] == 8 and "extra" not in on_disk
    assert sd.meta() == meta and sd.storage_url() == "sqlite:///x.db"
