"""The Optuna side of a sweep, without Ray: one study per (scale, arm), its trials and their states.

Everything that reads a sweep (`status`, `export`, `analyze`, the dashboard) goes
through this module and `sweeps.layout`, so reading a finished sweep never
imports Ray. The Tune searcher (`sweeps.searcher`) writes what this reads.

Trial states, one vocabulary everywhere (status, analysis, live view, docs):

    pending        in the budget, not started yet (no Optuna trial yet)
    running        handed out, not ended
    completed      trained to its full budget (Optuna COMPLETE, value = final val_ppl)
    stopped_early  stopped by ASHA before its full budget (Optuna PRUNED)
    diverged       ended by a non-finite loss or val ppl (Optuna PRUNED with +inf at that step
                   and the constraint `diverged` violated, so TPE learns from it)
    failed         crashed, retries exhausted (Optuna FAIL)
    orphaned       lost to a driver kill before Tune saved it; not counted (Optuna FAIL)

The user attribute `status` holds the state of every ended trial.
"""

from __future__ import annotations

import math

import optuna
from sqlalchemy.exc import DatabaseError
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from kdsweep.distill.errors import ConfigError
from kdsweep.distill.run.rundir import COMPLETED, DIVERGED, STOPPED_EARLY
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.space import Dist, SearchSpace, load_space
from kdsweep.sweeps.storage import display, open_storage

METRIC, MODE = "val_ppl", "min"
# Optuna user-attribute keys kdsweep writes on every trial.
ATTR_TRIAL, ATTR_STATUS, ATTR_STEP, ATTR_BEST_STEP = "ray_trial_id", "status", "step", "best_step"
PENDING, RUNNING, FAILED, ORPHANED = "pending", "running", "failed", "orphaned"
# Every state a counted trial can be in, in the order tables show them.
TRIAL_STATES = (RUNNING, STOPPED_EARLY, COMPLETED, DIVERGED, FAILED)
ENDED_STATES = (STOPPED_EARLY, COMPLETED, DIVERGED, FAILED)



def optuna_distribution(d: Dist):
    if d.type == "choice":
        return CategoricalDistribution(list(d.values))
    if d.type == "int":
        return IntDistribution(int(d.low), int(d.high))
    return FloatDistribution(d.low, d.high, log=d.type == "loguniform")


def study_name(sweep: str, study: str) -> str:
    """Optuna study name: unique per sweep so several sweeps can share one database."""
    return f"{sweep}:{study}"


def open_study(storage_url: str, sweep: str, study: str, sampler: optuna.samplers.BaseSampler | None = None
               ) -> optuna.Study:
    return optuna.create_study(storage=open_storage(storage_url), study_name=study_name(sweep, study),
                               direction="minimize", sampler=sampler, load_if_exists=True)


def existing_studies(storage_url: str, sweep: str) -> list[str]:
    """Studies of a sweep of this name already in the storage (a shared database may hold several sweeps)."""
    prefix = study_name(sweep, "")
    return [n for n in optuna.get_all_study_names(open_storage(storage_url)) if n.startswith(prefix)]


def trial_status(t: FrozenTrial) -> str:
    """The kdsweep state of an Optuna trial (see the module docstring)."""
    if t.state == TrialState.COMPLETE:
        return COMPLETED
    if t.state == TrialState.PRUNED:
        return t.user_attrs.get(ATTR_STATUS, STOPPED_EARLY)
    if t.state == TrialState.RUNNING:
        return RUNNING
    if t.state == TrialState.FAIL:
        return t.user_attrs.get(ATTR_STATUS, FAILED)
    return t.state.name.lower()


def study_trials(sd: SweepDir) -> tuple[SearchSpace, dict[str, list[FrozenTrial]]]:
    """(space, {study name: [FrozenTrial]}) for every study of the sweep, read without writing: a
    study not in the storage yet has no trials (it is not created). A damaged database is a
    ConfigError naming it."""
    space = load_space(sd.space)
    url = sd.storage_url()
    try:
        storage = open_storage(url)
        names = set(optuna.get_all_study_names(storage))
        return space, {s.name: optuna.load_study(storage=storage, study_name=study_name(sd.name, s.name))
                       .get_trials(deepcopy=False) if study_name(sd.name, s.name) in names else []
                       for s in space.studies}
    except (DatabaseError, optuna.exceptions.StorageInternalError) as e:
        cause = str(getattr(e, "orig", None) or e.__cause__ or e).splitlines()[0][:200]
        raise ConfigError(f"{display(url)}: the sweep's Optuna database cannot be read ({cause}); restore it "
                          "from a copy of the sweep folder") from None


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the lowest objective, or None."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return min(done, key=lambda t: t.value) if done else None
