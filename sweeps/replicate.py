"""`kdsweep sweep replicate NAME --seeds N`: retrain each study's best config with N seeds, and
the matched ablations.

method §6: best configurations are re-run with several seeds before they enter a
table. Each replicate is a Ray Tune trial (same executor as the sweep) training
the best params of one study (a (scale, arm) and search replicate) to the space's full
budget with a seed that is never the search seed, then scoring the **val** split (what
the analysis chooses arms on) and the **test** split (what it reports) with every
method §5 metric (its `metrics.json`).

**Matched ablation** (method §7, "enhancement on vs off at the same config"): the best
config of every enhanced study is also trained with each of its enhancements switched
off (`both`: once without uncertainty weighting, once without smoothing), same params,
same seeds, so the analysis can pair each seed's on and off runs: the effect of the
mechanism at its tuned point, apart from the luck of the search that found that point.
Every enhanced arm is ablated, not only the chosen one: the choice is made on val
replicates that do not exist yet, and ablating all is no selection.

Re-running skips replicates whose `metrics.json` says completed; an interrupted
replicate resumes from the checkpoints in its own folder.
"""

from __future__ import annotations

import time

from ray import tune

from kdsweep.distill.errors import ConfigError
from kdsweep.distill.run.rundir import DIVERGED, finished_run
from kdsweep.sweeps.cache import ensure_teacher_cache, record_teacher_cache
from kdsweep.sweeps.callbacks import tune_callbacks
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.preflight import check_inputs_of_space, check_resources
from kdsweep.sweeps.runner import Log, check_shared_storage, init_ray, max_steps
from kdsweep.sweeps.shared_storage import StorageGuard, raise_if_refused, remove
from kdsweep.sweeps.space import with_tracker
from kdsweep.sweeps.study import best_trial, study_trials
from kdsweep.sweeps.trial import EXECUTORS, trial_resources


def replicate_specs(sd: SweepDir, seeds: int, ablations: bool = True) -> tuple[object, list[dict]]:
    """(space, [trial config per (study, seed[, enhancement off])]) for every study with a completed trial;
    the seeds are `space.replicate_seeds(seeds, search replicate)`, never a search seed. With
    `ablations`, every enhanced study's best config again with each enhancement off (`off`), same seeds."""
    space, by_study = study_trials(sd)
    specs = []
    for study in space.studies:
        best = best_trial(by_study[study.name])
        if best is None:
            continue
        variants = [()] + ([(e,) for e in study.enhancements] if ablations else [])
        for off in variants:
            for seed in space.replicate_seeds(seeds, study.search_replicate):
                specs.append({"study": study.name, "scale": study.scale, "arm": study.arm,
                              "optuna_number": best.number, "replicate_seed": seed, "off": list(off), **best.params})
    if not specs:
        raise ConfigError(f"sweep {sd.name!r} has no completed trial to replicate yet")
    return space, specs


def is_finished(sd: SweepDir, spec: dict, space) -> bool:
    """Ended for good: diverged, or completed with its test metrics (`distill.run.rundir.finished_run`)."""
    study = space.study(spec["study"])
    done = finished_run(sd.replicate_dir(study.scale, study.arm, spec["replicate_seed"], study.search_replicate,
                                         tuple(spec["off"])))
    return done is not None and (done.status == DIVERGED or bool(done.final_metrics))


def _replicate_trial(config: dict, *, space, sweep_dir: str, teacher_cache: str | None, storage_check) -> None:
    EXECUTORS[space.search["executor"]](config["rep"], space=space, sweep_dir=sweep_dir, teacher_cache=teacher_cache,
                                        storage_check=storage_check)


def run_replicates(sd: SweepDir, *, seeds: int, address: str | None = None, tracker: str | None = None,
                   ablations: bool = True, log: Log = print) -> list[dict]:
    """Run the unfinished replicates (and, with `ablations`, the matched ablations); returns the specs
    that were run. `tracker` overrides the space's `tracking.tracker` for this run (see
    `sweeps.space.with_tracker`)."""
    if seeds < 1:
        raise ConfigError(f"--seeds: got {seeds}, allowed: >= 1")
    space, specs = replicate_specs(sd, seeds, ablations)
    check_inputs_of_space(space, sd.root.parent, final_eval=True)
    space = with_tracker(space, tracker)
    todo = [s for s in specs if not is_finished(sd, s, space)]
    studies = [s["study"] for s in todo]
    callbacks = tune_callbacks(space, sd.name, title=f"replicates of {sd.name}", max_steps=max_steps(space),
                               budgets={study: studies.count(study) for study in dict.fromkeys(studies)})
    meta = sd.meta()
    sd.update_meta(replicate_seeds=max(seeds, meta.replicate_seeds),  # what the analysis should expect
                   ablations=ablations or meta.ablations)
    n_ablation = sum(bool(s["off"]) for s in specs)
    log(f"replicates of {sd.name}: {len(specs)} planned ({len(specs) - n_ablation} of best configs, {n_ablation} "
        f"matched ablations; {len(specs) - len(todo)} already finished, {len(todo)} to run)")
    if not todo:
        return []
    init_ray(address, log)
    check_resources(space, log)
    storage_check = check_shared_storage(space, sd.root.parent, log)
    record_teacher_cache(sd, teacher_cache := ensure_teacher_cache(space, sd.root.parent, log))
    trainable = tune.with_resources(tune.with_parameters(_replicate_trial, space=space, sweep_dir=str(sd.root),
                                                         teacher_cache=teacher_cache, storage_check=storage_check),
                                    trial_resources(space))
    tuner = tune.Tuner(
        trainable,
        param_space={"rep": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=space.search["max_concurrent"],
                                    trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(name=f"replicate-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(sd.root),
                                  failure_config=tune.FailureConfig(max_failures=space.search["max_failures"]),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  callbacks=[*callbacks, guard := StorageGuard(str(sd.root))], stop=guard,
                                  verbose=0),
    )
    try:
        tuner.fit()
    finally:
        remove(storage_check)
    raise_if_refused(sd.root)
    return todo
