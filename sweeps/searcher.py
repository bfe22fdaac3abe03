"""One Tune searcher over many Optuna studies: one study per (scale, arm) (method §6).

Why not Ray's stock `OptunaSearch`: it holds a single study, and it tells
Optuna that a trial ASHA stopped early is COMPLETE with its truncated score,
so TPE learns from partial results. Here:

* every (scale, arm) is its own Optuna study in RDB storage (SQLite in the
  sweep folder, or a shared database URL), seeded, with its own budget;
  `suggest` hands out trials round-robin over studies with budget left;
* intermediate `val_ppl` values are reported to the Optuna trial at their
  training step;
* at the end a trial is told COMPLETE with its FINAL val_ppl (trained to its full
  budget: the objective measures the model the run saves, replicates and tests),
  PRUNED (stopped early by ASHA; the driver writes its run summary first), PRUNED with
  +inf at the divergence step and a violated constraint `diverged` (so TPE learns
  where training blows up), or FAIL (crashed, retries exhausted); the user attribute
  `status` names which (`sweeps.study` states);
* TPE is multivariate, with `search.startup_trials` random start-up trials, and a
  reopened study is reseeded from its trial count so a resume never replays proposals.

The searcher keeps no state of its own that a restore could get wrong. Which
Optuna trial belongs to which Tune trial (user attribute `ray_trial_id`), how
many trials each study has handed out and which are in flight are read back
from the storage the first time the searcher runs in a process. Why: Tune
uploads its experiment snapshot and the searcher's snapshot as separate files,
one after the other, so after a driver kill they can come from different
moments (a trial the searcher handed out that Tune's snapshot never held, or
the reverse). `reconcile_with_tune` settles the storage against the trials
Tune's restored snapshot will run; nothing else is trusted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from kdsweep.distill.files.numbers import dumps, number
from kdsweep.distill.run.checkpoint import drop_resume_state
from kdsweep.distill.run.rundir import (
    CHECKPOINTS_DIR,
    COMPLETED,
    DIVERGED,
    STOPPED_EARLY,
    RunResult,
    TrainReport,
    finished_run,
    write_summary_if_absent,
)
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.space import SearchSpace
from kdsweep.sweeps.study import (
    ATTR_BEST_STEP,
    ATTR_STATUS,
    ATTR_STEP,
    ATTR_TRIAL,
    FAILED,
    METRIC,
    MODE,
    ORPHANED,
    open_study,
    optuna_distribution,
)
from kdsweep.sweeps.warmstart import WarmSource, enqueue, seeds, waits_for, warm_sources


def sampler_seed(base: int, study_index: int, n_existing: int) -> int:
    """The TPE seed of a study: `base * 1000 + index` for a fresh study; for a reopened one
    (resume) a seed derived from how many trials it already holds. Why: a sampler re-created
    with its first seed replays its first proposals (its random start-up trials come from
    its own RNG, not from the study), so a resumed study would re-try configurations."""
    if n_existing == 0:
        return base * 1000 + study_index
    return int(np.random.SeedSequence([base, study_index, n_existing]).generate_state(1)[0])


def startup_trials(space: SearchSpace) -> int:
    """TPE's random start-up trials per study: `search.startup_trials`, else a third of the budget
    (at most Optuna's default of 10): with 10 random trials a budget of 3 or 16 would be mostly
    random search."""
    given = space.search["startup_trials"]
    return given if given is not None else min(10, max(1, space.search["trials_per_study"] // 3))


class StudySearcher(Searcher):
    def __init__(self, space: SearchSpace, sd: SweepDir, storage_url: str, git_commit: str = "unknown",
                 warm_start_from: dict[str, WarmSource] | None = None):
        super().__init__(metric=METRIC, mode=MODE)
        self.space, self.sweep_dir, self.storage_url, self.git_commit = space, sd.root, storage_url, git_commit
        self.sweep = sd.name
        self.budget = space.search["trials_per_study"]
        self.max_concurrent = space.search["max_concurrent"]
        self._studies: dict[str, optuna.Study] = {}
        self._assigned: dict[str, int] | None = None  # study -> trials handed out (orphans excluded)
        self._live: dict[str, tuple[str, int]] = {}  # tune trial id -> (study, optuna trial number)
        # Warm start (sweeps/warmstart.py): which study waits for which, and where each one's seeds come from.
        self._waits_for = waits_for(space)
        self._warm_sources = warm_sources(space, self.sweep, storage_url, warm_start_from)

    # ---- studies ----------------------------------------------------------
    def _study(self, name: str) -> optuna.Study:
        if name not in self._studies:
            index = [s.name for s in self.space.studies].index(name)
            study = open_study(self.storage_url, self.sweep, name)
            n_existing = len(study.get_trials(deepcopy=False))
            # Multivariate TPE models the parameters jointly (lr and warmup interact); constant
            # liar (Optuna's default) keeps concurrent trials from being proposed the same point.
            study.sampler = optuna.samplers.TPESampler(
                seed=sampler_seed(self.space.search["seed"], index, n_existing),
                n_startup_trials=startup_trials(self.space), multivariate=True)
            if n_existing == 0:
                self._describe(study, self.space.study(name))
            self._studies[name] = study
        return self._studies[name]

    def _describe(self, study: optuna.Study, spec) -> None:
        """What optuna-dashboard shows: the objective's name, and what this study is."""
        with warnings.catch_warnings():  # set_metric_names is marked experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
        for key, value in (("sweep", self.sweep), ("scale", spec.scale), ("arm", spec.arm),
                           ("git_commit", self.git_commit), ("search_space", self.space.raw)):
            study.set_user_attr(key, value)

    @property
    def assigned(self) -> dict[str, int]:
        self._load()
        return self._assigned

    @property
    def live(self) -> dict[str, tuple[str, int]]:
        self._load()
        return self._live

    def _load(self) -> None:
        """Read who was handed out, and who is in flight, from the storage (once per process)."""
        if self._assigned is not None:
            return
        self._assigned, self._live = {}, {}
        for s in self.space.studies:
            kept = [t for t in self._study(s.name).get_trials(deepcopy=False)
                    if t.user_attrs.get(ATTR_STATUS) != ORPHANED and t.state != TrialState.WAITING]
            self._assigned[s.name] = len(kept)
            self._live |= {t.user_attrs[ATTR_TRIAL]: (s.name, t.number) for t in kept
                           if t.state == TrialState.RUNNING and ATTR_TRIAL in t.user_attrs}

    # ---- Tune searcher API ---------------------------------------------------
    def suggest(self, trial_id: str):
        open_ = [s for s in self.space.studies if self.assigned[s.name] < self.budget]
        if not open_:
            return Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None  # Tune asks again when a trial ends
        ready = [s for s in open_ if self._ready(s.name)]
        if not ready:
            return None  # warm start: the scales below are still running
        study = min(ready, key=lambda s: self.assigned[s.name])  # round-robin: equal budgets fill evenly
        self._warm_start(study)
        ot = self._study(study.name).ask({k: optuna_distribution(d) for k, d in study.params.items()})
        ot.set_user_attr(ATTR_TRIAL, trial_id)
        self.assigned[study.name] += 1
        self.live[trial_id] = (study.name, ot.number)
        return {"study": study.name, "scale": study.scale, "arm": study.arm, "optuna_number": ot.number, **ot.params}

    def _ready(self, name: str) -> bool:
        """Whether a study may start: under `previous_scale`, once the study it waits for has ended."""
        before = self._waits_for.get(name)
        return before is None or (self.assigned[before] >= self.budget
                                  and all(study != before for study, _ in self.live.values()))

    def _warm_start(self, study) -> None:
        """Enqueue the study's seeds before its first trial is asked (idempotent: sweeps.warmstart.enqueue)."""
        source = self._warm_sources.get(study.name)
        if source is None or self.assigned[study.name] > 0:
            return
        source_trials = open_study(source.storage_url, source.sweep, source.study).get_trials(deepcopy=False)
        enqueue(self._study(study.name), seeds(source, source_trials, study, self.space.search["warm_start_top_k"],
                                               self.budget))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.live:
            self._report(*self.live[trial_id], result)

    def _report(self, name: str, number: int, result: dict) -> None:
        """Record val_ppl at its training step as an Optuna intermediate value."""
        value = result.get(METRIC)
        if "step" not in result or not (isinstance(value, (int, float)) and math.isfinite(value)):
            return
        with warnings.catch_warnings():  # a resumed trial re-reports a step: Optuna keeps the first
            warnings.simplefilter("ignore")
            self._trial(name, number).report(float(value), step=int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # A trial Tune resumed whose Optuna trial had already ended (told before a driver kill
        # that came before Tune's snapshot) is not live: replaying its end changes nothing.
        if trial_id not in self.live:
            return
        name, number = self.live.pop(trial_id)
        study = self._study(name)
        trial = self._trial(name, number)
        result = result or {}
        # Tune hands the result that made ASHA stop a trial to on_trial_complete, not on_trial_result.
        self._report(name, number, result)
        report = TrainReport.from_row(result)
        value = None
        if error:
            status, state = FAILED, TrialState.FAIL
        elif report.ended_as == DIVERGED:
            # PRUNED with +inf at the divergence step and a violated constraint: TPE ranks it
            # behind every feasible trial, so it learns where training blows up (a FAIL trial
            # would be ignored by the sampler altogether).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial.report(math.inf, step=int(report.step or 0))
            trial.set_constraint("diverged", 1.0)
            status, state = DIVERGED, TrialState.PRUNED
        elif report.ended_as == COMPLETED:
            # The objective is the FINAL model's val_ppl: the model the run saves, replicates and tests.
            status, state, value = COMPLETED, TrialState.COMPLETE, result[METRIC]
        else:
            status, state, value = self._stopped_early(trial_id, report)
        trial.set_user_attr(ATTR_STATUS, status)
        for key, attr in (("step", ATTR_STEP), ("best_step", ATTR_BEST_STEP)):
            if key in result:
                trial.set_user_attr(attr, int(result[key]))
        study.tell(number, value, state=state)

    def _stopped_early(self, trial_id: str, report: TrainReport) -> tuple[str, TrialState, float | None]:
        """ASHA stopped the trial: its process is ended without warning, so its summary is written
        here, BEFORE Optuna is told (a resume trusts "Optuna says it ended" to mean "its run folder
        says so too"). A run that reached its end first and wrote its own summary wins that race:
        it is told as what it is, completed with its final val_ppl."""
        run_dir = SweepDir(self.sweep_dir).run_dir(trial_id)
        stopped = RunResult(STOPPED_EARLY, int(report.step or 0), number(report.best_val_ppl),
                            int(-1 if report.best_step is None else report.best_step), run_dir, val_ppl=report.val_ppl)
        if not write_summary_if_absent(stopped):
            own = finished_run(run_dir)
            if own is not None and own.status == COMPLETED and own.val_ppl is not None:
                return COMPLETED, TrialState.COMPLETE, float(own.val_ppl)
        # It never resumes: its optimizer state and older checkpoints go (its trial thread waits in
        # its report, so nothing is writing a checkpoint now).
        drop_resume_state(run_dir / CHECKPOINTS_DIR)
        # PRUNED keeps its intermediate values, and TPE treats it as such.
        return STOPPED_EARLY, TrialState.PRUNED, None

    # Optuna's ask/tell API has no public "report to trial number N" after a restart: these two
    # helpers (and `reconcile_with_tune`) are the only places that reach into the study's storage.
    def _trial_id(self, name: str, number: int) -> int:
        study = self._study(name)
        return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)

    def _trial(self, name: str, number: int) -> optuna.Trial:
        return optuna.Trial(self._study(name), self._trial_id(name, number))

    # ---- persistence ----------------------------------------------------------
    # Tune insists on a searcher snapshot; it is written for a reader's benefit only. A restore
    # reads the storage again instead (see the module docstring for why).
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            fh.write(dumps({"assigned": self.assigned, "live": self.live}))

    def restore(self, checkpoint_path: str) -> None:
        self._assigned = None

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_studies"], d["_assigned"], d["_live"] = {}, None, {}  # reopened and re-read, never pickled
        return d


def reconcile_with_tune(space: SearchSpace, sweep: str, storage_url: str, in_flight: Iterable[str]) -> list[str]:
    """Before a resume: fail (status "orphaned") every Optuna trial still RUNNING that Tune will not run.

    `in_flight` holds the ids of the trials that Tune's restored snapshot holds as unfinished.
    An Optuna trial asked for after that snapshot was saved (or whose `ray_trial_id` was never
    written) can never finish; it does not count against its study's budget, so the resumed
    searcher hands out a replacement. Returns the orphaned trials as "study#number".
    """
    in_flight = set(in_flight)
    orphaned = []
    for s in space.studies:
        study = open_study(storage_url, sweep, s.name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(ATTR_TRIAL) not in in_flight:
                # Optuna has no public "set a user attribute on trial N" outside the trial's own run.
                study._storage.set_trial_user_attr(t._trial_id, ATTR_STATUS, ORPHANED)
                study.tell(t.number, state=TrialState.FAIL)
                orphaned.append(f"{s.name}#{t.number}")
    return orphaned
