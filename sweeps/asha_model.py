"""How many training steps a study's trials use under ASHA: the expectation `kdsweep estimate` prints.

The rule simulated is Ray Tune's asynchronous successive halving as `sweeps.scheduler`
runs it, per study:

* rungs at ``grace * rf**k`` steps, k = 0, 1, ... while <= max_t (Ray's
  ``AsyncHyperBandScheduler``, s = 0); a trial is judged at its first report at or past a
  rung (reports come every ``eval_interval`` steps and at the last step), against the
  values recorded at that rung so far: it stops if it is worse than their
  ``(1 - 1/rf)`` quantile (linear interpolation, numpy's default); the first trial at a rung
  always continues; a report at the last step never stops a trial (`PerStudyASHA`);
* at one report only the highest rung not yet judged counts (Ray checks rungs from the top).

Model assumptions, stated because the answer depends on them:

* a trial's quality is the same at every rung (the ranking of trials does not change as
  they train), and qualities are independent draws: the expectation is over their order;
* trials reach each rung in the order they start (trial i has been judged at a rung
  before trial i + 1 is): exact for one trial at a time, an approximation when trials
  run side by side.

For many trials this tends to the textbook fraction ``rf**-k`` of trials reaching rung k;
with few trials (the demo's 3 per study) the first trials always pass, and the expected
savings are smaller, which is why it is simulated rather than taken from the formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIMULATIONS = 1000


@dataclass(frozen=True)
class AshaExpectation:
    trials: int
    full_steps: int  # trials * max_t: what every trial trained to its budget would use
    expected_steps: float  # sum over the study's trials of the steps each trains, expected
    expected_stopped: float  # trials stopped early, expected

    @property
    def fraction(self) -> float:
        return self.expected_steps / self.full_steps if self.full_steps else 1.0


def rungs(max_t: int, grace: int, rf: float) -> list[int]:
    """Ray's rung milestones, ascending (grace is capped at max_t as `PerStudyASHA` does)."""
    grace = min(grace, max_t)
    count = int(math.log(max_t / grace) / math.log(rf) + 1)
    return [int(grace * rf**k) for k in range(count)]


def report_steps(max_t: int, eval_interval: int) -> list[int]:
    """The steps at which a trial reports: every eval_interval steps and at the last step."""
    steps = list(range(eval_interval, max_t + 1, eval_interval))
    return steps if steps and steps[-1] == max_t else steps + [max_t]


def _quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile of a short list, without numpy's per-call cost."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def simulate(rewards: list[float], max_t: int, eval_interval: int, grace: int, rf: float) -> list[int]:
    """Steps each trial trains, for trials with the given rewards (higher is better), in order."""
    milestones = sorted(rungs(max_t, grace, rf), reverse=True)
    recorded: dict[int, list[float]] = {m: [] for m in milestones}
    reports = report_steps(max_t, eval_interval)
    trained = []
    for reward in rewards:
        judged: set[int] = set()
        steps = max_t
        for step in reports:
            if step == max_t:
                break  # the final report never stops a trial
            stop = False
            for m in milestones:  # highest first, like Ray
                if step >= m and m in judged:
                    break
                if step < m:
                    continue
                if recorded[m] and reward < _quantile(recorded[m], 1 - 1 / rf):
                    stop = True
                recorded[m].append(reward)
                judged.add(m)
                break
            if stop:
                steps = step
                break
        trained.append(steps)
    return trained


@lru_cache(maxsize=64)
def expected_asha_steps(trials: int, max_t: int, eval_interval: int, grace: int, rf: float,
                        simulations: int = SIMULATIONS, seed: int = 0) -> AshaExpectation:
    """Expected steps a study of ``trials`` trials uses under ASHA (see the module docstring)."""
    rng = np.random.default_rng(seed)
    total = stopped = 0
    for _ in range(simulations):
        trained = simulate(rng.random(trials).tolist(), max_t, eval_interval, grace, rf)
        total += sum(trained)
        stopped += sum(t < max_t for t in trained)
    return AshaExpectation(trials, trials * max_t, total / simulations, stopped / simulations)


def without_early_stopping(trials: int, max_t: int) -> AshaExpectation:
    return AshaExpectation(trials, trials * max_t, float(trials * max_t), 0.0)
