"""One Tune searcher over many Optuna studies: one study per (scale, arm) (SPEC §6).

Why not Ray's stock `OptunaSearch`: it holds a single study, and it tells
Optuna that a trial ASHA stopped early is COMPLETE with its truncated score,
so TPE learns from partial results. Here:

* every (scale, arm) is its own Optuna study in RDB storage (SQLite in the
  sweep folder, or a shared database URL), seeded, with its own budget;
  `suggest` hands out trials round-robin over studies with budget left;
* intermediate `val_ppl` values are reported to the Optuna trial at their
  training step;
* at the end a trial is told COMPLETE (trained to its full budget), PRUNED
  (stopped early by ASHA: its last result says `done_training: false`),
  or FAIL with user attribute `status` = "diverged" or "failed".

The searcher's own state (which Tune trial is which Optuna trial, how many
trials each study has handed out) is plain data, saved by Tune with the
experiment; the studies themselves live in the storage and are reopened.
"""

from __future__ import annotations

import math
import pickle
import warnings

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sweeps.space import Dist, SearchSpace

METRIC, MODE = "val_ppl", "min"
# Optuna user-attribute keys kdsweep writes on every trial.
ATTR_TRIAL, ATTR_STATUS, ATTR_STEP, ATTR_BEST_STEP = "ray_trial_id", "status", "step", "best_step"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_distribution(d: Dist):
    if d.type == "choice":
        return CategoricalDistribution(list(d.values))
    if d.type == "int":
        return IntDistribution(int(d.low), int(d.high))
    return FloatDistribution(d.low, d.high, log=d.type == "loguniform")


def study_name(sweep: str, study: str) -> str:
    """Optuna study name: unique per sweep so several sweeps can share one database."""
    return f"{sweep}:{study}"


def open_study(storage_url: str, sweep: str, study: str, seed: int | None = None) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed) if seed is not None else None
    return optuna.create_study(storage=storage_url, study_name=study_name(sweep, study), direction="minimize",
                               sampler=sampler, load_if_exists=True)


class StudySearcher(Searcher):
    def __init__(self, space: SearchSpace, sweep: str, storage_url: str):
        super().__init__(metric=METRIC, mode=MODE)
        self.space, self.sweep, self.storage_url = space, sweep, storage_url
        self.budget = space.search["trials_per_study"]
        self.assigned = {s.name: 0 for s in space.studies}
        self.live: dict[str, tuple[str, int]] = {}  # tune trial id -> (study, optuna trial number)
        self._studies: dict[str, optuna.Study] = {}

    # ---- studies ----------------------------------------------------------
    def _study(self, name: str) -> optuna.Study:
        if name not in self._studies:
            index = [s.name for s in self.space.studies].index(name)
            self._studies[name] = open_study(self.storage_url, self.sweep, name,
                                             seed=self.space.search["seed"] * 1000 + index)
        return self._studies[name]

    # ---- Tune searcher API ---------------------------------------------------
    def suggest(self, trial_id: str):
        open_ = [s for s in self.space.studies if self.assigned[s.name] < self.budget]
        if not open_:
            return Searcher.FINISHED
        study = min(open_, key=lambda s: self.assigned[s.name])  # round-robin: equal budgets fill evenly
        ot = self._study(study.name).ask({k: optuna_distribution(d) for k, d in study.params.items()})
        ot.set_user_attr(ATTR_TRIAL, trial_id)
        self.assigned[study.name] += 1
        self.live[trial_id] = (study.name, ot.number)
        return {"study": study.name, "scale": study.scale, "arm": study.arm, "optuna_number": ot.number, **ot.params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.live:
            self._report(*self.live[trial_id], result)

    def _report(self, name: str, number: int, result: dict) -> None:
        """Record val_ppl at its training step as an Optuna intermediate value."""
        value = result.get(METRIC)
        if "step" not in result or not (isinstance(value, (int, float)) and math.isfinite(value)):
            return
        if self._finished(name, number):
            return
        with warnings.catch_warnings():  # a resumed trial re-reports a step: Optuna keeps the first
            warnings.simplefilter("ignore")
            self._trial(name, number).report(float(value), step=int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        name, number = self.live.pop(trial_id)
        if self._finished(name, number):
            # Told before a driver kill that came before Tune saved this searcher's state:
            # the storage is the record; Tune replaying the trial's end changes nothing.
            return
        study = self._study(name)
        trial = self._trial(name, number)
        result = result or {}
        # Tune hands the result that made ASHA stop a trial to on_trial_complete, not on_trial_result.
        self._report(name, number, result)
        if error:
            status, state, value = "failed", TrialState.FAIL, None
        elif result.get("diverged"):
            status, state, value = "diverged", TrialState.FAIL, None
        elif result.get("done_training"):
            status, state, value = "completed", TrialState.COMPLETE, result.get("best_val_ppl", result.get(METRIC))
        else:
            # ASHA stopped it: PRUNED keeps its intermediate values, and TPE treats it as such.
            status, state, value = "stopped_early", TrialState.PRUNED, None
        trial.set_user_attr(ATTR_STATUS, status)
        for key, attr in (("step", ATTR_STEP), ("best_step", ATTR_BEST_STEP)):
            if key in result:
                trial.set_user_attr(attr, int(result[key]))
        study.tell(number, value if state == TrialState.COMPLETE else None, state=state)

    # Optuna's ask/tell API has no public "report to trial number N" after a restart: these three
    # helpers are the only place that reaches into the study's storage.
    def _trial_id(self, name: str, number: int) -> int:
        study = self._study(name)
        return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)

    def _trial(self, name: str, number: int) -> optuna.Trial:
        return optuna.Trial(self._study(name), self._trial_id(name, number))

    def _finished(self, name: str, number: int) -> bool:
        return self._study(name)._storage.get_trial(self._trial_id(name, number)).state.is_finished()

    # ---- persistence (Tune saves this with the experiment) ----------------------
    def get_state(self) -> dict:
        return {"assigned": dict(self.assigned), "live": dict(self.live)}

    def set_state(self, state: dict) -> None:
        self.assigned, self.live = dict(state["assigned"]), dict(state["live"])
        self._fail_orphans()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_studies"] = {}  # database handles are reopened, never pickled
        return d

    def _fail_orphans(self) -> None:
        """After a driver kill: Optuna trials asked for but never saved as Tune trials can't finish."""
        live = {(n, num) for n, num in self.live.values()}
        for s in self.space.studies:
            for t in self._study(s.name).get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (s.name, t.number) not in live:
                    self._study(s.name)._storage.set_trial_user_attr(t._trial_id, ATTR_STATUS, "orphaned")
                    self._study(s.name).tell(t.number, state=TrialState.FAIL)
