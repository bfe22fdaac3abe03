"""`kdsweep sweep export`: the best config of every (scale, arm) as a `kdsweep train` config, and
(`--students`) the chosen student of every (scale, arm), ready for `from_pretrained`.

Each config is a complete TrainConfig YAML (so `kdsweep train --config FILE` takes it unchanged)
for the FINAL model: `final_eval: true` (its run scores val and test), an absolute `output_dir`
(`<DIR>/<scale>_<arm>/final`, the same wherever it is run from), no fault-injection keys, and a
`provenance` mapping that says where it came from: sweep, Tune trial id, Optuna trial number, its
objective (the final model's val_ppl) and step, kdsweep git commit, teacher id and the SHA-256 of
the data file.

`export_students` copies one student per (scale, arm) into `<DIR>/<scale>_<arm>/`: the HF files of
its run's `student/` folder (config, weights, tokenizer) and a model card (README.md). The student is
chosen on val, never test (method §7): the replicate seed of the tuned config with the lowest val
ppl_ratio when `sweep replicate` ran, else the study's best completed search trial (lowest val_ppl,
what the config export takes; over its search replicates). Every check runs before the first file
is written; students are put together in hidden folders beside their targets and renamed into place
last, so an error leaves no part of an export behind.
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdsweep.distill.config import FIELDS, TrainConfig, dump_config, load_config
from kdsweep.distill.data.batches import file_sha256, resolve_data_path
from kdsweep.distill.errors import ConfigError
from kdsweep.distill.files.atomic import put_in_place, temp_path
from kdsweep.distill.inputs import check_writable_file
from kdsweep.distill.run.rundir import (COMPLETED, CONFIG_NAME, STUDENT_DIR, RunResult, finished_run, make_readable,
                                    read_log)
from kdsweep.sweeps.layout import SweepDir, config_file_name, git_commit, parse_replicate_name, student_folder_name
from kdsweep.sweeps.study import ATTR_STEP, ATTR_TRIAL, best_trial, study_trials

FINAL_DIR = "final"  # <DIR>/<scale>_<arm>/final: where an exported config's run writes
# TrainConfig keys that exist only to test failure paths (fault injection): never in an exported config.
TEST_ONLY_KEYS = tuple(k for k in FIELDS if k.startswith("inject_"))
CARD = "README.md"
# What `kdsweep analyze` writes for the verdicts (analysis/verdicts.py; read as a file: sweeps sits below
# analysis): one row per (scale, comparison, arm).
VERDICTS_CSV = Path("tables") / "verdicts.csv"
TUNED = "tuned arm vs tuned baseline"
CHOICE_METRIC = "ppl_ratio"  # replicates are chosen on val ppl_ratio, as analysis/select.py chooses arms


def export_best(sd: SweepDir, out_dir: str | Path) -> list[Path]:
    """Write one config per study that has a completed trial; returns the files written."""
    space, by_study = study_trials(sd)
    picks = _config_picks(sd, space, by_study)
    out = Path(out_dir).expanduser().absolute()
    _check_config_targets(out, picks)
    out.mkdir(parents=True, exist_ok=True)
    return _write_configs(sd, space, picks, out)


def _config_picks(sd: SweepDir, space, by_study) -> list:
    """[(study, its best completed trial)] for the studies that have one; none at all is an error."""
    picks = [(s, best_trial(by_study[s.name])) for s in space.studies]
    if not any(best for _, best in picks):
        raise ConfigError(f"sweep {sd.name!r} has no completed trial yet; nothing to export")
    return [(s, best) for s, best in picks if best is not None]


def _check_config_targets(out: Path, picks: list) -> None:
    """Every config file `picks` will write, checked before the first is written: all files or none."""
    for study, _ in picks:
        check_writable_file(out / config_file_name(study.scale, study.arm, study.search_replicate), "--out")


def _write_configs(sd: SweepDir, space, picks: list, out: Path) -> list[Path]:
    common = _provenance(sd, space)
    return [_write_config(space, study, best, out, common) for study, best in picks]


def _provenance(sd: SweepDir, space) -> dict:
    """What every exported config's provenance shares (the data file is hashed once per export)."""
    return {"sweep": sd.name, "git_commit": sd.meta().git_commit, "teacher": space.teacher,
            "data": space.data, "data_sha256": file_sha256(resolve_data_path(space.data))}


def _write_config(space, study, best, out: Path, common: dict) -> Path:
    provenance = {
        "sweep": common["sweep"], "study": study.name, "trial_id": best.user_attrs.get(ATTR_TRIAL),
        "optuna_number": best.number, "val_ppl": best.value, "step": best.user_attrs.get(ATTR_STEP), **common,
    }
    final = out / student_folder_name(study.scale, study.arm, study.search_replicate) / FINAL_DIR
    cfg = space.trial_config(study, dict(best.params), str(final), provenance=provenance, final_eval=True,
                             **{k: FIELDS[k].default for k in TEST_ONLY_KEYS})
    path = out / config_file_name(study.scale, study.arm, study.search_replicate)
    dump_config(cfg, path, omit=TEST_ONLY_KEYS, header=f"kdsweep sweep export {common['sweep']}: best {study.name} "
                                  f"(val_ppl {best.value:.4f}); train with: kdsweep train --config {path.name}")
    return path  # 0644: write_atomic's mode


# ---------------------------------------------------------------------------------------------------
# Students
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentPick:
    """The student exported for one (scale, arm): its run and how it was chosen."""

    scale: str
    arm: str
    run: RunResult
    config: TrainConfig  # the run's own config.yaml (what this student was trained with)
    basis: str  # how it was chosen, in words (the model card says it)

    @property
    def student(self) -> Path:
        return self.run.run_dir / STUDENT_DIR


def _val_ratio(run: RunResult | None) -> float:
    value = (run.val_metrics or {}).get(CHOICE_METRIC) if run and run.status == COMPLETED else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def _from_replicates(sd: SweepDir, scale: str, arm: str) -> StudentPick | None:
    """The tuned config's replicate seed (any search replicate) with the lowest val ppl_ratio, or None."""
    runs = []
    for folder in sorted(sd.replicates.iterdir()) if sd.replicates.is_dir() else []:
        name = parse_replicate_name(folder.name)
        if name and (name.scale, name.arm, name.off) == (scale, arm, ()) and (folder / STUDENT_DIR).is_dir():
            run = finished_run(folder)
            if math.isfinite(ratio := _val_ratio(run)):
                runs.append((ratio, name.search_replicate, name.seed, run))
    if not runs:
        return None
    ratio, r, seed, run = min(runs, key=lambda x: x[:3])
    basis = (f"replicate seed {seed}{f' of search replicate {r}' if r else ''}: the lowest val {CHOICE_METRIC} "
             f"({ratio:.4g}) of the {len(runs)} completed replicate seed(s) of the tuned config (`sweep replicate`)")
    return StudentPick(scale, arm, run, load_config(run.run_dir / CONFIG_NAME), basis)


def _from_search(sd: SweepDir, space, by_study, scale: str, arm: str) -> StudentPick | None:
    """The best completed search trial over the (scale, arm)'s studies; a ConfigError when its student is gone."""
    bests = [(b.value, s, b) for s in space.studies if (s.scale, s.arm) == (scale, arm)
             if (b := best_trial(by_study[s.name])) is not None]
    if not bests:
        return None
    value, study, best = min(bests, key=lambda x: x[0])
    run_dir = sd.run_dir(str(best.user_attrs.get(ATTR_TRIAL)))
    run = finished_run(run_dir)
    if run is None or run.status != COMPLETED or not (run_dir / STUDENT_DIR).is_dir():
        raise ConfigError(f"{scale}/{arm}: the best search trial {best.user_attrs.get(ATTR_TRIAL)} (study "
                          f"{study.name}) has no saved student in {run_dir / STUDENT_DIR}; nothing to export")
    n = sum(best_trial([t]) is not None for s in space.studies if (s.scale, s.arm) == (scale, arm)
            for t in by_study[s.name])  # the completed trials (what best_trial chooses among)
    basis = (f"search trial {best.user_attrs.get(ATTR_TRIAL)} (study {study.name}, Optuna #{best.number}): the lowest "
             f"val_ppl ({value:.4g}) of the {n} completed search trial(s); `sweep replicate` has not scored this "
             "config on the full val and test splits yet")
    return StudentPick(scale, arm, run, load_config(run_dir / CONFIG_NAME), basis)


def choose_students(sd: SweepDir, space, by_study) -> list[StudentPick]:
    """One StudentPick per (scale, arm) of the space (`study_trials`); a ConfigError naming every (scale, arm)
    without one."""
    picks, missing = [], []
    for scale in space.scales:
        for arm in space.arms:
            pick = _from_replicates(sd, scale, arm) or _from_search(sd, space, by_study, scale, arm)
            if pick is None:
                missing.append(f"{scale}/{arm}")
            else:
                picks.append(pick)
    if missing:
        raise ConfigError(f"sweep {sd.name!r}: no finished trial with a saved student for {', '.join(missing)}; "
                          "--students exports one per (scale, arm): wait for the sweep to finish (`kdsweep sweep "
                          "status`), or export the configs alone (without --students)")
    return picks


def check_export_out(sd: SweepDir, out: Path) -> Path:
    """`--out` as an absolute folder outside the sweep folder (whose files the sweep's commands own)."""
    out = out.expanduser().absolute()
    root = sd.root.absolute()
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ConfigError(f"--out: {out} is inside the sweep folder {root}; give a folder outside it")
    return out


def export(sd: SweepDir, out_dir: str | Path, *, students: bool = False) -> list[Path]:
    """`kdsweep sweep export`: the configs (`export_best`) and, with `students`, the chosen students
    (`choose_students`), all checked before anything is written; returns what was written."""
    out = check_export_out(sd, Path(out_dir))
    space, by_study = study_trials(sd)
    targets = [out / student_folder_name(scale, arm) for scale in space.scales for arm in space.arms] if students \
        else []
    for target in targets:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ConfigError(f"--out: {target} already exists and is not empty; a student is exported into a "
                              "new or empty folder: give another --out or remove it")
    config_picks = _config_picks(sd, space, by_study)
    _check_config_targets(out, config_picks)
    picks = choose_students(sd, space, by_study) if students else []  # in targets' order
    verdicts = _read_verdicts(sd)
    staged: list[Path] = []
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for pick, target in zip(picks, targets):
            staged.append(temp_path(target))
            _stage_student(sd, pick, staged[-1], verdicts)
        written += _write_configs(sd, space, config_picks, out)
        for tmp, target in zip(staged, targets):
            if target.is_dir():
                target.rmdir()  # empty (checked above); rmdir, not put_in_place's rmtree, if it filled meanwhile
            written.append(put_in_place(tmp, target))
    except BaseException:
        for path in written:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        for tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
    return written


def _stage_student(sd: SweepDir, pick: StudentPick, tmp: Path, verdicts: list[dict] | None) -> None:
    """The student's files and its model card in `tmp` (files 0644, folders 0755)."""
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pick.student, tmp, copy_function=shutil.copyfile)
    (tmp / CARD).write_text(model_card(sd, pick, verdicts))
    make_readable(tmp)


# ---------------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------------


def _read_verdicts(sd: SweepDir) -> list[dict] | None:
    """The rows of `kdsweep analyze`'s verdict table (default output folder), or None before an analysis."""
    path = sd.analysis / VERDICTS_CSV
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def verdict_text(sd: SweepDir, pick: StudentPick, verdicts: list[dict] | None) -> str:
    if verdicts is None:
        return f"none yet: `kdsweep analyze {sd.folder}` has not been run (no {sd.analysis / VERDICTS_CSV})"
    rows = [r for r in verdicts if (r.get("scale"), r.get("arm"), r.get("comparison")) == (pick.scale, pick.arm, TUNED)]
    if not rows:
        return (f"none: {pick.arm} has no row at {pick.scale} in `kdsweep analyze`'s verdicts (they compare each "
                "enhanced arm with the tuned baseline)")
    r = rows[0]
    return (f"vs the tuned baseline on test {CHOICE_METRIC}: {r['verdict_holm']} after Holm's correction (raw: "
            f"{r['verdict']}); {pick.arm} - baseline = {_num(r['diff_mean'])} [{_num(r['ci_low'])}, "
            f"{_num(r['ci_high'])}] (n={r['n']} {r['unit']}, p={_num(r['p'])}, Holm p={_num(r['p_holm'])}). From "
            "`kdsweep analyze`'s tables/verdicts.csv: a comparison of tuned methods (read the notes there)")


def _num(text) -> str:
    try:
        return f"{float(text):.4g}"
    except (TypeError, ValueError):
        return str(text)


def _data_record(run_dir: Path) -> dict:
    """The data its run's first "start" event recorded (file hash, split sizes, leakage); {} if none."""
    start = next((r for r in read_log(run_dir) if r.get("event") == "start"), {})
    return start.get("data") or {}


def _metric_rows(pick: StudentPick) -> list[str]:
    """Markdown table rows: split, proteins (n), ppl, teacher ppl, ppl_ratio, accuracy, ECE."""
    rows = []
    for split, m in (("val", pick.run.val_metrics), ("test", pick.run.final_metrics)):
        if m:
            rows.append(f"| {split} (whole split) | {m.get('n_proteins')} | {_num(m.get('ppl'))} | "
                        f"{_num(m.get('ppl_teacher'))} | {_num(m.get('ppl_ratio'))} | {_num(m.get('accuracy'))} | "
                        f"{_num(m.get('ece'))} |")
    if not pick.run.val_metrics:  # a search trial: the early-stopping val subset only
        n_val = _data_record(pick.run.run_dir).get("n_val")
        cap = pick.config.val_max_proteins
        n = min(n_val, cap) if n_val is not None and cap is not None else (n_val if cap is None else f"<= {cap}")
        rows.append(f"| val (early-stopping subset) | {n} | {_num(pick.run.val_ppl)} | - | - | - | - |")
    if not pick.run.final_metrics:
        rows.append("| test | - | not scored: search trials skip the test split (`kdsweep sweep replicate` scores it) "
                    "| - | - | - | - |")
    return rows


def model_card(sd: SweepDir, pick: StudentPick, verdicts: list[dict] | None) -> str:
    cfg = pick.config
    meta = sd.meta()
    data = _data_record(pick.run.run_dir)
    split = (f"{cfg.split_method} split, fractions train/val/test {list(cfg.split)}"
             + (f", MMseqs2 clusters at {cfg.cluster_identity} identity / {cfg.cluster_coverage} coverage"
                if cfg.split_method == "cluster" else ""))
    counts = (f"; {data['n_train']} / {data['n_val']} / {data['n_test']} proteins"
              if all(k in data for k in ("n_train", "n_val", "n_test")) else "")
    config_text = yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k not in TEST_ONLY_KEYS}, sort_keys=False)
    return "\n".join([
        "---",
        "library_name: transformers",
        "tags: [kdsweep, knowledge-distillation, protein-language-model, gpt2]",
        "---",
        "",
        f"# {sd.name}: {pick.scale} / {pick.arm} student",
        "",
        f"A GPT-2 protein language model distilled by kdsweep from the teacher `{cfg.teacher}` (scale "
        f"`{pick.scale}`, arm `{pick.arm}`, {pick.run.step} steps). Load it with",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "```",
        "",
        "## Provenance",
        "",
        f"- teacher: `{cfg.teacher}`" + (f" (read from the teacher cache `{cfg.teacher_cache}`)"
                                          if cfg.teacher_cache else ""),
        f"- data: `{cfg.data}` (SHA-256 {data.get('data_sha256', 'not recorded')})",
        f"- split: {split}{counts}",
        f"- chosen: {pick.basis} (chosen on val, never on test)",
        f"- run folder: `{pick.run.run_dir}`",
        f"- sweep: `{sd.name}` ({sd.root}); kdsweep commit that trained it: {meta.git_commit or 'unknown'}; "
        f"exported by kdsweep commit {git_commit()}",
        "",
        "## Metrics",
        "",
        "ppl: per-token perplexity of the student; ppl_ratio: student ppl / teacher ppl on the same tokens "
        "(docs/method.md §5). n: proteins scored.",
        "",
        "| split | proteins (n) | ppl | teacher ppl | ppl_ratio | accuracy | ECE |",
        "|---|---|---|---|---|---|---|",
        *_metric_rows(pick),
        "",
        f"Verdict ({pick.arm} at {pick.scale}): {verdict_text(sd, pick, verdicts)}",
        "",
        "## Config",
        "",
        "The kdsweep config this student was trained with (`kdsweep train --config` takes it):",
        "",
        "```yaml",
        config_text.rstrip(),
        "```",
        "",
    ])
