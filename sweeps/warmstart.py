"""Warm-starting a study from a finished study of the same arm at another width (method §6).

`search.warm_start: previous_scale`: a (scale, arm) study starts only when the same arm's study
at the next smaller width (same search replicate) has ended, and its first trials are that
study's top-k completed configs (`search.warm_start_top_k`, best first), each twice:

* `mup`: the learning rate times d_source / d_this (d = n_embd, the hidden width). μTransfer's
  rule for Adam's hidden (matrix-like) weights, learning rate ∝ 1/width (Yang et al. 2022,
  "Tensor Programs V", arXiv:2203.03466, Table 3). kdsweep's students are standard-parameterised
  GPT-2s with one learning rate for every weight, so the rule is a guess here, which is why
* `same`: the learning rate unchanged is also tried, so the data decide.

Warmup, τ, α and smoothing are carried over unchanged. A value outside this study's range is
clipped into it (a choice value it does not offer is left to the sampler). Then the study
continues with its own sampler. `kdsweep sweep run --warm-start-from OTHER` seeds the same way
from an earlier sweep's study of the same arm at the nearest width at or below (else the
smallest above); with `previous_scale` only the smallest scale seeds from it.

The seeds are Optuna WAITING trials (`Study.enqueue_trial`), held in the study's storage: a
resumed driver finds them there, and enqueueing again skips configs the study already holds
(`skip_if_exists`), so a resume adds no duplicates. Each carries the user attributes
`warm_start_from` ("<sweep>:<study>#<trial number>") and `warm_start_lr` (`mup` or `same`).
Why not Ray's `OptunaSearch(points_to_evaluate=...)`: kdsweep's searcher is its own (one study
per (scale, arm), sweeps/searcher.py), and those points live in the searcher's memory and
pickle, not in the Optuna storage a resume reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsweep.distill.errors import ConfigError
from kdsweep.distill.models import load_scales
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.space import Dist, SearchSpace, Study, load_space
from kdsweep.sweeps.study import existing_studies, study_name

ATTR_WARM, ATTR_WARM_LR = "warm_start_from", "warm_start_lr"
MUP, SAME = "mup", "same"  # the two learning rates each seed is tried with


def width(scale: str) -> int:
    """A scale's hidden width d (n_embd)."""
    return int(load_scales()[scale]["n_embd"])


def mup_lr(lr: float, d_source: int, d_this: int) -> float:
    """μTransfer's Adam hidden-layer rule, lr ∝ 1/width: lr * d_source / d_this."""
    return lr * d_source / d_this


@dataclass(frozen=True)
class WarmSource:
    """Where a study's seeds come from: a study of the same arm, `study` ("<scale>/<arm>[.r<k>]") of
    sweep `sweep` in the Optuna storage `storage_url`."""

    sweep: str
    storage_url: str
    study: str
    scale: str


def previous_study(space: SearchSpace, study: Study) -> Study | None:
    """The same arm's study (same search replicate) at the largest width below this one's, or None."""
    below = [s for s in space.studies if s.arm == study.arm and s.search_replicate == study.search_replicate
             and width(s.scale) < width(study.scale)]
    return max(below, key=lambda s: width(s.scale)) if below else None


def nearest_scale(scales, scale: str) -> str | None:
    """Of `scales`, the nearest width at or below `scale`'s, else the smallest above (None: no scales)."""
    d = width(scale)
    below = [s for s in scales if width(s) <= d]
    if below:
        return max(below, key=width)
    return min(scales, key=width) if scales else None


def waits_for(space: SearchSpace) -> dict[str, str]:
    """study -> the study that must end before it starts (`previous_scale`; {} for `none`)."""
    if space.search["warm_start"] != "previous_scale":
        return {}
    return {s.name: prev.name for s in space.studies if (prev := previous_study(space, s)) is not None}


def warm_sources(space: SearchSpace, sweep: str, storage_url: str,
                 external: dict[str, WarmSource] | None = None) -> dict[str, WarmSource]:
    """Each study's seed source: its previous scale in this sweep (`previous_scale`), else the one
    `--warm-start-from` gave (`external`), else none."""
    own = {s.name: WarmSource(sweep, storage_url, prev.name, prev.scale) for s in space.studies
           if space.search["warm_start"] == "previous_scale" and (prev := previous_study(space, s)) is not None}
    return {**(external or {}), **own}


def external_sources(space: SearchSpace, other: SweepDir) -> dict[str, WarmSource]:
    """`--warm-start-from OTHER`: each study's source in the earlier sweep `other` (same arm and search
    replicate, else replicate 0; nearest width, see `nearest_scale`). With `previous_scale` only the
    studies without a smaller scale here get one. Refused (ConfigError) when no study would be seeded."""
    theirs = load_space(other.space)
    url = other.storage_url()
    held = set(existing_studies(url, other.name))
    own = waits_for(space)
    out = {}
    for s in space.studies:
        scale = nearest_scale(theirs.scales, s.scale) if s.arm in theirs.arms else None
        if s.name in own or scale is None:
            continue
        for r in dict.fromkeys((s.search_replicate, 0)):
            name = Study(scale, s.arm, {}, r).name
            if study_name(other.name, name) in held:
                out[s.name] = WarmSource(other.name, url, name, scale)
                break
    if not out:
        raise ConfigError(f"--warm-start-from: sweep {other.name!r} has no study of arms {', '.join(space.arms)} "
                          f"to seed from (its arms: {', '.join(theirs.arms)}; studies in its storage: {len(held)})")
    return out


def _fitted(dist: Dist, value: Any) -> Any | None:
    """`value` inside `dist`: a number clipped into [low, high] (rounded for int), a choice kept only if offered."""
    if dist.type == "choice":
        return value if value in dist.values else None
    clipped = min(max(float(value), dist.low), dist.high)
    return int(round(clipped)) if dist.type == "int" else clipped


@dataclass(frozen=True)
class Seed:
    """One enqueued config: the params fixed for the trial and the user attributes that mark it."""

    params: dict[str, Any]
    user_attrs: dict[str, Any]


def top_configs(trials: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The k completed trials with the lowest finite objective, best first (ties: the earlier trial)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (t.value, t.number))[:k]


def seeds(source: WarmSource, source_trials: list[FrozenTrial], target: Study, k: int, budget: int) -> list[Seed]:
    """The configs `target` tries first: per top-k source trial (best first), lr rescaled (`mup`) then
    unchanged (`same`); a duplicate (equal widths, or both clipped to a bound) once; at most `budget`."""
    out: list[Seed] = []
    for t in top_configs(source_trials, k):
        carried = {name: fitted for name, value in t.params.items()
                   if name in target.params and name != "lr"
                   and (fitted := _fitted(target.params[name], value)) is not None}
        for kind, lr in ((MUP, mup_lr(t.params["lr"], width(source.scale), width(target.scale))),
                         (SAME, t.params["lr"])):
            params = {**carried, "lr": _fitted(target.params["lr"], lr)}
            if all(params != s.params for s in out):
                out.append(Seed(params, {ATTR_WARM: f"{source.sweep}:{source.study}#{t.number}", ATTR_WARM_LR: kind}))
    return out[:budget]


def enqueue(study: optuna.Study, planned: list[Seed]) -> int:
    """Enqueue the seeds a study does not hold yet (any state: a resume re-enqueues nothing);
    returns how many were added."""
    before = len(study.get_trials(deepcopy=False))
    for s in planned:
        study.enqueue_trial(s.params, user_attrs=s.user_attrs, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def warm_from(trial: FrozenTrial) -> str | None:
    """The source of an enqueued trial ("<sweep>:<study>#<n>" and its lr rule), None for a sampled one."""
    src = trial.user_attrs.get(ATTR_WARM)
    return None if src is None else f"{src} ({trial.user_attrs.get(ATTR_WARM_LR, '?')} lr)"
