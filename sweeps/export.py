"""`kdsweep sweep export`: the best config of every (scale, arm) as a `kdsweep train` config.

Each file is a complete TrainConfig YAML (so `kdsweep train --config FILE`
takes it unchanged) whose `provenance` mapping says where it came from: sweep,
Tune trial id, Optuna trial number, its objective (the final model's val_ppl) and
step, kdsweep git commit, teacher id and the SHA-256 of the data file.
"""

from __future__ import annotations

from pathlib import Path

from kdsweep.distill.config import dump_config
from kdsweep.distill.data import file_sha256, resolve_data_path
from kdsweep.distill.errors import ConfigError
from kdsweep.distill.inputs import check_writable_file
from kdsweep.sweeps.layout import SweepDir, config_file_name
from kdsweep.sweeps.study import ATTR_STEP, ATTR_TRIAL, best_trial, study_trials


def export_best(sd: SweepDir, out_dir: str | Path, *, train_root: str = "runs/final") -> list[Path]:
    """Write one config per study that has a completed trial; returns the files written."""
    space, by_study = study_trials(sd)
    meta = sd.meta()
    data_hash = file_sha256(resolve_data_path(space.data))
    picks = [(s, best_trial(by_study[s.name])) for s in space.studies]
    if not any(best for _, best in picks):
        raise ConfigError(f"sweep {sd.name!r} has no completed trial yet; nothing to export")
    out = Path(out_dir)
    for study, best in picks:  # every target, before the first is written: all files or none
        if best is not None:
            check_writable_file(out / config_file_name(study.scale, study.arm), "--out")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for study, best in picks:
        if best is None:
            continue
        provenance = {
            "sweep": sd.name, "study": study.name, "trial_id": best.user_attrs.get(ATTR_TRIAL),
            "optuna_number": best.number, "val_ppl": best.value, "step": best.user_attrs.get(ATTR_STEP),
            "git_commit": meta.git_commit, "teacher": space.teacher, "data": space.data,
            "data_sha256": data_hash,
        }
        name = config_file_name(study.scale, study.arm, study.search_replicate)
        cfg = space.trial_config(study, dict(best.params), f"{train_root}/{Path(name).stem}", provenance=provenance)
        path = out / name
        dump_config(cfg, path, header=f"kdsweep sweep export {sd.name}: best {study.name} "
                                      f"(val_ppl {best.value:.4f}); train with: kdsweep train --config {path.name}")
        written.append(path)
    return written
