"""What one Tune trial runs: the `distill` loop, through one of two executors.

* `ray_train` (the Ray Train V2 pattern of Ray 2.60): the Tune function builds a
  `TorchTrainer` with the space's ScalingConfig (DDP across workers, fp16/bf16
  on GPU) and a fixed run name per trial, so a restored trial resumes its Train
  run from its last checkpoint; `TuneReportCallback` forwards rank 0's reports.
* `local`: the loop runs inside the Tune function itself (one worker, CPU or a
  share of a GPU). It skips Train's start-up and its blocking reports
  (docs/benchmarks.md has the measured costs); the default for one-worker trials.

Either way the trial's run folder is `<sweep>/runs/<trial id>` (config,
complete JSONL history, metrics.json, checkpoints), stable across retries and
restores. Trials report metrics only: the run's own checkpoint (written once,
distill/run/checkpoint.py) is what a restarted trial resumes from, so Ray never
copies one (a second copy of model + AdamW state per report, and its upload time).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray.train
import ray.tune

from kdsweep.distill.config import TrainConfig, config_from_dict
from kdsweep.distill.run.rundir import RunLog, finished_run
from kdsweep.distill.run.train import run_training
from kdsweep.sweeps.environment import configure
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.shared_storage import StorageCheck, check_this_node
from kdsweep.sweeps.space import SearchSpace, switched_off, worker_resources

NODE_EVENT = "node"


def trial_train_config(space: SearchSpace, config: dict, sweep_dir: str, trial_id: str, *,
                       teacher_cache: str | None) -> TrainConfig:
    """The TrainConfig of a Tune trial.

    A search trial's config is the searcher's {study, optuna_number, params...}: it
    trains in `runs/<trial id>` with the search seed. A replicate's config also holds
    `replicate_seed` (never the search seed: `SearchSpace.replicate_seeds`): it retrains
    that study's best params with that seed in `replicates/<scale>__<arm>__seed<k>` (with `off`, the
    enhancements a matched ablation switches off, in `..__<arm>.no-<enhancement>__..`) and ends with the
    val-split (choosing) and test-split (reporting) metrics.

    Either reads the sweep's teacher cache when it has one (`teacher_cache`: the folder sweeps/cache.py
    made ready before any trial started, handed to the trainable as a parameter; None: the live teacher).
    """
    sd = SweepDir(Path(sweep_dir))
    study = space.study(config["study"])
    params = {k: config[k] for k in study.params}
    provenance = {"sweep": sd.name, "trial_id": trial_id, "study": study.name,
                  "optuna_number": config.get("optuna_number")}
    seed = config.get("replicate_seed")
    if seed is None:
        return space.trial_config(study, params, str(sd.run_dir(trial_id)), provenance=provenance,
                                  teacher_cache=teacher_cache)
    off = tuple(config.get("off", ()))  # a matched ablation: enhancements switched off (sweeps/replicate.py)
    run_dir = sd.replicate_dir(study.scale, study.arm, seed, study.search_replicate, off)
    return space.trial_config(study, params, str(run_dir), seed=seed, final_eval=True, teacher_cache=teacher_cache,
                              provenance={**provenance, "search_seed": space.search_seed_of(study.search_replicate),
                                          "replicate_seed": seed, "switched_off": list(off)}, **switched_off(off))


def _already_ended(cfg: TrainConfig) -> bool:
    """A restored trial whose run already ended (its summary was written, and Optuna told, after
    Tune's last snapshot): report its last row again so Tune's record is the real one, and train
    nothing. Returning normally (not raising) makes Tune count it as finished, not as an error."""
    done = finished_run(Path(cfg.output_dir))
    if done is None:
        return False
    ray.tune.report(done.last_row)
    return True


def record_node(cfg: TrainConfig) -> None:
    """One run-log row per attempt naming the Ray node it runs on: where each trial ran, and
    where it moved after losing a node (`kdsweep` cannot learn this from Tune afterwards)."""
    RunLog(cfg.output_dir).append({"event": NODE_EVENT, "node_id": ray.get_runtime_context().get_node_id(),
                                   "pid": os.getpid(), "time": time.time()})


def _limit_threads(cpus: float) -> None:
    # Concurrent trials on one machine must not each spin up a thread per core.
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def local_trial(config: dict, *, space: SearchSpace, sweep_dir: str, teacher_cache: str | None,
                storage_check: StorageCheck | None = None) -> None:
    """Tune function: train in this process, report through `ray.tune.report`."""
    configure()  # the entry point of a trial's process
    check_this_node(storage_check)  # first: a node without the shared storage must not write a thing
    _limit_threads(space.resources["cpus_per_worker"])
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_train_config(space, config, sweep_dir, trial_id, teacher_cache=teacher_cache)
    if _already_ended(cfg):
        return
    record_node(cfg)
    run_training(cfg, report=ray.tune.report, log=lambda _: None)


def _train_worker(loop_config: dict) -> None:
    """Ray Train worker: every rank runs the loop; DDP is set up by TorchTrainer."""
    check_this_node(loop_config["storage_check"])  # each rank: workers may sit on other nodes than the trial
    _limit_threads(loop_config["cpus"])
    cfg = config_from_dict(loop_config["cfg"])
    if ray.train.get_context().get_world_rank() == 0:
        record_node(cfg)
    run_training(cfg, report=ray.train.report, log=lambda _: None)


def ray_train_trial(config: dict, *, space: SearchSpace, sweep_dir: str, teacher_cache: str | None,
                    storage_check: StorageCheck | None = None) -> None:
    """Tune function: build and fit a TorchTrainer (Train V2) for this trial."""
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    configure()  # the entry point of a trial's process (its Train run's console)
    check_this_node(storage_check)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_train_config(space, config, sweep_dir, trial_id, teacher_cache=teacher_cache)
    if _already_ended(cfg):  # before Train's ~15 s start-up
        return
    res = space.resources
    gpus = float(res["gpus_per_worker"])
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg.to_dict(), "cpus": res["cpus_per_worker"], "storage_check": storage_check},
        scaling_config=ray.train.ScalingConfig(num_workers=res["workers"], use_gpu=gpus > 0,
                                               resources_per_worker=worker_resources(space)),
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # fixed per trial: a restored trial resumes this run
            storage_path=str(SweepDir(Path(sweep_dir)).train_storage),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


EXECUTORS = {"local": local_trial, "ray_train": ray_train_trial}


def trial_bundles(space: SearchSpace) -> list[tuple[str, dict]]:
    """What one trial holds at once, as (what, Ray resources) bundles: each must fit on one node."""
    if space.search["executor"] == "local":
        return [("trial", worker_resources(space))]
    # The Tune function that drives the TorchTrainer, then the workers, which reserve their own.
    return [("trial driver", {"CPU": 1.0})] + [("Ray Train worker", worker_resources(space))] * space.resources["workers"]


def trial_resources(space: SearchSpace) -> dict:
    """What Tune reserves for the trial function itself."""
    (_, first), *_ = trial_bundles(space)
    return {"cpu": first["CPU"], "gpu": first.get("GPU", 0.0)}
