"""Run or resume a sweep: Ray Tune + per-study Optuna TPE + per-study ASHA (method §6).

One Tune experiment holds every (scale, arm) study: the searcher hands out
trials round-robin across studies and caps the trials in flight, and on a
cluster with room several studies' trials run at once. A killed driver is
resumed with `Tuner.restore` (finished trials stay finished; running ones
restart from their last checkpoint); the Optuna studies, which live in
storage, are first settled against the trials Tune's snapshot will run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from kdsweep.distill.config import config_from_dict
from kdsweep.distill.data.batches import precluster
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import ConfigError
from kdsweep.distill.files.diskfull import full_disk_named
from kdsweep.distill.run.checkpoint import drop_resume_state
from kdsweep.distill.run.rundir import CHECKPOINTS_DIR, STOPPED_EARLY, finished_run
from kdsweep.distill.run.train import total_steps
from kdsweep.sweeps.cache import cache_root, ensure_teacher_cache, record_teacher_cache
from kdsweep.sweeps.callbacks import tracker_callbacks, tune_callbacks
from kdsweep.sweeps.environment import configure
from kdsweep.sweeps.layout import SweepDir, SweepMeta, check_sweep_name, git_commit, open_sweep, storage_root
from kdsweep.sweeps.localray import init_loopback_ray
from kdsweep.sweeps.preflight import asha_warnings, check_inputs_of_space, check_resources, check_tune_state
from kdsweep.sweeps.progress import EarlyStopping
from kdsweep.sweeps.reaper import start_reaper
from kdsweep.sweeps.scheduler import PerStudyASHA
from kdsweep.sweeps.searcher import StudySearcher, reconcile_with_tune
from kdsweep.sweeps.shared_storage import StorageCheck, StorageGuard, check_every_node, plant, raise_if_refused, remove
from kdsweep.sweeps.space import SearchSpace, dump_space, load_space, reuses_processes
from kdsweep.sweeps.status import sweep_complete
from kdsweep.sweeps.storage import display, is_sqlite
from kdsweep.sweeps.study import existing_studies, study_trials
from kdsweep.sweeps.textfit import command_lines, kdsweep_command
from kdsweep.sweeps.tracking import tracker_hint
from kdsweep.sweeps.trial import EXECUTORS, trial_resources
from kdsweep.sweeps.warmstart import WarmSource, external_sources

Log = Callable[[str], None]
TRAIN_HEALTH_CHECK_S = "0.2"


def init_ray(address: str | None, log: Log) -> str | None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start an embedded local Ray.
    Returns the address of the cluster joined, None for an embedded Ray."""
    configure()  # a sweep started from Python, not by `kdsweep`, gets the same console
    # Reporting every eval trips Tune's "snapshotting too often" warning on short trials; it is
    # expected here, so keep the console readable.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A Ray Train worker's report waits for its controller's next poll of the workers (every 2 s by
    # default): 0.2 s cut a ray_train trial's fixed cost by 11 s (docs/benchmarks.md). An embedded
    # Ray's workers inherit it from here; a cluster's nodes need it in `ray start`'s environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_HEALTH_CHECK_S)
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            log(f"joining Ray cluster at {address}")
            ray.init(address=address)
        else:
            # Embedded local Ray: nothing to start by hand; quiet logs, no dashboard process; every
            # socket on 127.0.0.1 (sweeps/localray.py).
            init_loopback_ray(include_dashboard=False, configure_logging=True, logging_level="WARNING",
                              log_to_driver=False)
            start_reaper()  # a driver killed without shutting Ray down must not leave Ray's processes running
    return ray.get_runtime_context().gcs_address if address else None


def max_steps(space: SearchSpace) -> int:
    """The training steps of one full-budget trial (every study trains for the same budget)."""
    return total_steps(space.trial_config(space.studies[0], {}, "unused"))


def scheduler_for(space: SearchSpace):
    """ASHA per study (method §6), or with `search.early_stopping: false` none: every trial trains
    its full budget (benchmarks/asha_value.py measures what ASHA saves)."""
    if not space.search["early_stopping"]:
        return FIFOScheduler()
    return PerStudyASHA([s.name for s in space.studies], max_t=max_steps(space),
                        grace_period=space.search["grace_period"], reduction_factor=space.search["reduction_factor"])


def _tuner(space: SearchSpace, sd: SweepDir, storage_url: str, *, restore: bool, callbacks: list,
           storage_check: StorageCheck, teacher_cache: str | None,
           warm_start_from: dict[str, WarmSource] | None = None):
    executor = EXECUTORS[space.search["executor"]]
    # The teacher cache goes to each trial as a parameter (a restore hands Tune this trainable again,
    # with the cache `sweep resume` made ready).
    trainable = tune.with_resources(tune.with_parameters(executor, space=space, sweep_dir=str(sd.root),
                                                         teacher_cache=teacher_cache, storage_check=storage_check),
                                    trial_resources(space))
    if restore:  # Tune runs the callbacks it pickled with the experiment
        return tune.Tuner.restore(str(sd.tune), trainable=trainable, resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        # num_samples=-1: the searcher alone says when every study has its trials (a count here
        # would end the sweep early when trials lost to a driver kill are handed out again).
        tune_config=tune.TuneConfig(search_alg=StudySearcher(space, sd, storage_url, sd.meta().git_commit or "unknown",
                                                             warm_start_from),
                                    scheduler=scheduler_for(space),
                                    num_samples=-1, reuse_actors=reuses_processes(space),
                                    trial_dirname_creator=lambda t: t.trial_id, trial_name_creator=lambda t: t.trial_id),
        # No CheckpointConfig: trials hand Tune no checkpoints (sweeps/trial.py).
        run_config=tune.RunConfig(
            name=sd.tune.name,
            storage_path=str(sd.root),
            failure_config=tune.FailureConfig(max_failures=space.search["max_failures"]),
            callbacks=[*callbacks, guard := StorageGuard(str(sd.root))],
            stop=guard,
            verbose=0,
        ),
    )


def run_sweep(space: SearchSpace, *, name: str | None = None, storage: str | None = None,
              address: str | None = None, log: Log = print, warm_start_from: str | None = None) -> SweepDir:
    """Start a new sweep; refuses to overwrite an existing one (resume it instead). `warm_start_from`:
    an earlier sweep (same storage) whose studies seed this one's (sweeps/warmstart.py).

    Every check (inputs, trackers, then the cluster's resources) comes before the sweep folder is written."""
    name = check_sweep_name(space.name if name is None else name, "--name")
    sd = SweepDir(storage_root(storage) / name)
    if sd.meta_path.exists():
        raise ConfigError(f"sweep {name!r} already exists in {sd.root.parent}; "
                          f"resume it with `kdsweep sweep resume {name}` or pick another --name")
    warm = None if warm_start_from is None else external_sources(space, open_sweep(warm_start_from, storage))
    log(f"sweep {name}: checking its data, teacher and sizes, then starting Ray (seconds to a minute)")
    _precluster(space)
    check_inputs_of_space(space, sd.root.parent, check_memory=not _joins_cluster(address))
    for line in asha_warnings(space):
        log(f"warning: {line}")
    if space.search["storage_url"]:
        # The searcher counts a study's trials from the storage: a reused name would inherit them.
        if taken := existing_studies(space.search["storage_url"], name):
            raise ConfigError(f"search.storage_url already holds studies of a sweep named {name!r} "
                              f"({', '.join(taken)}); pick another --name")
    scheduler = scheduler_for(space)
    callbacks = tune_callbacks(space, name, title=f"sweep {name}", max_steps=max_steps(space),
                               budgets={s.name: space.search["trials_per_study"] for s in space.studies},
                               early_stopping=EarlyStopping(scheduler.rungs(), scheduler.reduction_factor)
                               if isinstance(scheduler, PerStudyASHA) else None)
    start_ray(space, address, space.search["storage_url"], log)
    storage_check = check_shared_storage(space, sd.root.parent, log)
    # Before the sweep folder: an interrupted build leaves no sweep, and the same command resumes it.
    teacher_cache = ensure_teacher_cache(space, sd.root.parent, log)
    sd.root.mkdir(parents=True, exist_ok=True)
    dump_space(space, sd.space)
    # storage_url null = the optuna.db beside sweep.json, wherever the folder is later moved.
    sd.write_meta(SweepMeta(name=name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_commit=git_commit(),
                            storage_url=space.search["storage_url"], executor=space.search["executor"],
                            source=space.source, total_trials=space.total_trials, state="running",
                            teacher_cache=teacher_cache, warm_start_from=warm_start_from))
    return _fit(space, sd, sd.storage_url(create=True), restore=False, address=address, log=log, callbacks=callbacks,
                storage_check=storage_check, teacher_cache=teacher_cache, warm_start_from=warm)


def resume_sweep(name: str, *, storage: str | None = None, address: str | None = None, log: Log = print) -> SweepDir:
    """Continue a sweep whose driver was killed or interrupted."""
    sd = open_sweep(name, storage)
    if not sd.tune.is_dir():
        raise ConfigError(f"sweep {name!r} has no Tune experiment to resume in {sd.tune}")
    check_tune_state(sd.tune)  # a damaged file is named here, before Ray starts
    space = load_space(sd.space)
    study_trials(sd)  # and so is a damaged Optuna database
    tracker_callbacks(space, sd.name)  # Tune resumes with its pickled callbacks: check they can run
    _precluster(space)
    storage_url = sd.storage_url()
    check_inputs_of_space(space, sd.root.parent, check_memory=not _joins_cluster(address))
    start_ray(space, address, sd.meta().storage_url, log)
    storage_check = check_shared_storage(space, sd.root.parent, log)
    teacher_cache = ensure_teacher_cache(space, sd.root.parent, log)  # rebuilt if deleted meanwhile
    record_teacher_cache(sd, teacher_cache)
    orphaned = reconcile_with_tune(space, sd.name, storage_url, {t.trial_id for t in tune_unfinished(sd)})
    if orphaned:
        log(f"{len(orphaned)} trial(s) started after Tune's last snapshot were lost and will be run again: "
            + ", ".join(orphaned))
    return _fit(space, sd, storage_url, restore=True, address=address, log=log, callbacks=[],
                storage_check=storage_check, teacher_cache=teacher_cache)


def _joins_cluster(address: str | None) -> bool:
    return bool(address or os.environ.get("RAY_ADDRESS"))


def _precluster(space: SearchSpace) -> None:
    """Cluster the sweep's data before Ray starts: a missing mmseqs stops the sweep here, not in
    every trial, and the trials read the clusters from the cache (distill.data.batches.precluster)."""
    cfg = config_from_dict({**space.train, "data": space.data}, source=space.source or "search space")
    precluster(space.data, column=cfg.sequence_column, split=SplitSpec.from_config(cfg))


def tune_unfinished(sd: SweepDir) -> list:
    """The trials Tune's newest experiment snapshot holds as unfinished: what a resume runs again
    (errored trials are not resumed)."""
    return [t for t in tune.ExperimentAnalysis(str(sd.tune)).trials if t.status not in ("TERMINATED", "ERROR")]


class _TuneInterruptMessages(logging.Filter):
    """Drops Tune's own Ctrl-C messages: they advise `Tuner.restore(...)`; kdsweep says
    `kdsweep sweep resume NAME` instead (kdsweep/cli.py)."""

    PREFIXES = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def quiet_tune_interrupt():
    tune_log = logging.getLogger("ray.tune.tune")
    only = _TuneInterruptMessages()
    tune_log.addFilter(only)
    try:
        yield
    finally:
        tune_log.removeFilter(only)


def start_ray(space: SearchSpace, address: str | None, storage_url: str | None, log: Log) -> None:
    """Start or join Ray, then check that the cluster can hold a trial (before Tune waits forever)."""
    init_ray(address, log)
    check_resources(space, log)
    if _joins_cluster(address) and (storage_url is None or is_sqlite(storage_url)):
        log("warning: this sweep joins a Ray cluster but keeps its Optuna studies in SQLite "
            f"({display(storage_url) if storage_url else 'optuna.db in the sweep folder'}); SQLite is not safe "
            "for concurrent writers on a network file system: set search.storage_url to a PostgreSQL URL "
            "(postgresql+psycopg://user:password@host:5432/db, pip install 'kdsweep[postgres]')")


def check_shared_storage(space: SearchSpace, storage_root: Path, log: Log) -> StorageCheck:
    """Before any trial: every alive node sees the sweep storage and the cache folder
    (sweeps/shared_storage.py); the check every trial repeats on its own node."""
    folders = [storage_root] + ([cache_root(space, storage_root)] if space.cache["enabled"] else [])
    check = plant(folders)
    try:
        check_every_node(check, log)
    except BaseException:
        remove(check)
        raise
    return check


def _fit(space: SearchSpace, sd: SweepDir, storage_url: str, *, restore: bool, address: str | None, log: Log,
         callbacks: list, storage_check: StorageCheck, teacher_cache: str | None,
         warm_start_from: dict[str, WarmSource] | None = None) -> SweepDir:
    joined = init_ray(address, log)  # already started by start_ray: returns the address it joined
    if joined:  # `kdsweep dashboard` prints the SSH port-forward line to this cluster's head
        sd.update_meta(ray_address=joined)
    log(f"sweep {sd.name}: {len(space.studies)} studies x {space.search['trials_per_study']} trials "
        f"({space.search['executor']} executor) -> {sd.root}")
    tuner = _tuner(space, sd, storage_url, restore=restore, callbacks=callbacks, storage_check=storage_check,
                   teacher_cache=teacher_cache, warm_start_from=warm_start_from)
    try:
        with quiet_tune_interrupt(), full_disk_named(sd.root):
            tuner.fit()
    finally:
        remove(storage_check)
    raise_if_refused(sd.root)
    drop_stopped_resume_state(sd)
    if not sweep_complete(sd):
        # Tune catches Ctrl-C itself: it saves its state and returns as if the sweep had ended.
        raise KeyboardInterrupt
    sd.update_meta(state="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return sd


def drop_stopped_resume_state(sd: SweepDir) -> int:
    """Optimizer state and older checkpoints of every trial ASHA stopped (it never resumes): the searcher
    drops them as it records the stop; this pass catches any it missed. Returns the bytes freed."""
    if not sd.runs.is_dir():
        return 0
    return sum(drop_resume_state(run / CHECKPOINTS_DIR) for run in sd.runs.iterdir()
               if (done := finished_run(run)) is not None and done.status == STOPPED_EARLY)


def next_steps(sd: SweepDir, storage: str | None, width: int | None = None) -> str:
    """What to run next, as printed runnable here (`kdsweep_command`), fitted to `width`
    (`sweeps.textfit.command_lines`), the tracker's UI included."""
    flag = f" --storage {storage}" if storage else ""
    kdsweep, name = kdsweep_command(), sd.folder
    commands = [
        (f"{kdsweep} sweep status {name}{flag}", "trials per (scale, arm), best objective and params"),
        (f"{kdsweep} dashboard {name}{flag} --tensorboard", "optuna-dashboard + TensorBoard on 127.0.0.1"),
        (f"{kdsweep} sweep replicate {name}{flag} --seeds 3", "retrain each best config with 3 seeds (val + test)"),
        (f"{kdsweep} analyze {name}{flag}", "after replicate: tables, plots, index.html"),
        (f"{kdsweep} sweep export {name}{flag} --out best/ --students",
         "a train config and the chosen student per (scale, arm)"),
    ]
    hint = tracker_hint(load_space(sd.space).tracking, sd)
    return "\n".join([f"results: {sd.root}", *command_lines(commands + ([hint] if hint else []), width)])
