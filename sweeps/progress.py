"""A running sweep at one moment: its trials by state, progress per study, and an ETA.

Ray-free: `sweeps.live` builds a `Progress` from Tune's trial objects at every event,
`sweeps.console` draws it (an in-place view in a terminal, short lines otherwise).
States are the `sweeps.study` vocabulary, plus two the view alone can see:

    pending    in the budget, not handed out yet
    starting   handed out, its process is starting (or waiting for resources); `sweep
               status` counts it as running

One meaning per word (the same in every line and table of the view, the status table
and the trackers):

    val_ppl     the val perplexity of the model at the trial's latest evaluation
    objective   the final model's val_ppl of a trial trained to its full budget (what Optuna
                minimises; only completed trials have one)
    min seen    the lowest val_ppl seen during the trial's training (read curves with it;
                never used to choose)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from sweeps.study import COMPLETED, ENDED_STATES, PENDING, RUNNING

STARTING = "starting"
# The view's states in the order it counts them.
VIEW_STATES = (PENDING, STARTING, RUNNING, *ENDED_STATES)


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    study: str  # "<scale>/<arm>"
    state: str  # one of VIEW_STATES
    step: int | None = None
    val_ppl: float | None = None  # latest evaluation's
    min_val_ppl: float | None = None  # lowest seen during training
    started_s: float | None = None  # view time (s) when Tune created the trial: start-up counts
    ended_s: float | None = None  # view time (s) when it ended
    params: dict = field(default_factory=dict)
    seed: int | None = None  # a replicate's seed

    def seconds(self, now: float) -> float | None:
        """Wall time from creation (start-up included) to its end, or to `now` while it runs."""
        if self.started_s is None:
            return None
        return (self.ended_s if self.ended_s is not None else now) - self.started_s

    @property
    def objective(self) -> float | None:
        """The final model's val_ppl: only a completed trial has one."""
        return self.val_ppl if self.state == COMPLETED else None


@dataclass(frozen=True)
class Progress:
    rows: tuple[TrialRow, ...]  # every trial Tune holds, in the order they were created
    ended_order: tuple[str, ...]  # ids of the trials that ended in this run, in that order
    budgets: dict[str, int]  # study -> trials planned
    elapsed_s: float
    max_steps: int | None = None
    slots: int = 0  # the most trials seen in flight (starting or running) at once: the parallelism reached

    @property
    def total(self) -> int:
        return sum(self.budgets.values())

    def _in(self, *states: str) -> list[TrialRow]:
        return [r for r in self.rows if r.state in states]

    @property
    def active(self) -> list[TrialRow]:
        """Running trials, then the ones starting."""
        return self._in(RUNNING) + self._in(STARTING)

    @property
    def ended(self) -> list[TrialRow]:
        return self._in(*ENDED_STATES)

    @property
    def replicates(self) -> bool:
        return any(r.seed is not None for r in self.rows)

    def counts(self) -> dict[str, int]:
        """Trials per view state; `pending` counts the whole budget not handed out yet."""
        counts = {s: len(self._in(s)) for s in VIEW_STATES if s != PENDING}
        return {PENDING: max(0, self.total - sum(counts.values())), **counts}

    def per_study(self) -> list[tuple[str, int, int]]:
        """(study, ended trials, planned trials) in budget order."""
        ended = [r.study for r in self.ended]
        return [(study, ended.count(study), budget) for study, budget in self.budgets.items()]

    def last_ended(self, k: int) -> list[TrialRow]:
        by_id = {r.trial_id: r for r in self.ended}
        return [by_id[t] for t in self.ended_order[-k:] if t in by_id]

    def eta_s(self) -> float | None:
        """Seconds until every planned trial has ended; None until a trial has ended in this run.

        The trials that ended give the wall time a trial holds its slot, from Tune creating it
        to its end, so a trial's start-up counts (early stops and divergences included: the
        estimate expects the same mix from now on). Each trial in flight is expected to last
        as long as the ended trials that outlived its age did (the mean of their durations;
        past them all, its own pace to its full budget); each trial not handed out yet as long
        as the mean. These are laid onto `slots` slots,
        the parallelism actually reached, each next trial taking the slot that frees first;
        the ETA is when the last slot frees.
        """
        now = self.elapsed_s
        durations = [d for r in self.ended if (d := r.seconds(now)) is not None]
        if not durations:
            return None
        pending, active = self.counts()[PENDING], self.active
        if pending + len(active) == 0:
            return 0.0
        mean = sum(durations) / len(durations)
        busy = [_expected_left(durations, r, now, self.max_steps) for r in active]
        n_slots = max(1, self.slots, len(active))
        free_at = sorted(busy)[-n_slots:] + [0.0] * max(0, n_slots - len(busy))
        heapq.heapify(free_at)
        for _ in range(pending):
            heapq.heappush(free_at, heapq.heappop(free_at) + mean)
        return max(free_at)


def _expected_left(durations: list[float], row: TrialRow, now: float, max_steps: int | None) -> float:
    """Seconds left for a trial in flight: the mean excess over its age of the ended trials that
    lasted longer; once it has outlived them all, its own pace to its full budget."""
    age = row.seconds(now) or 0.0
    longer = [d - age for d in durations if d > age]
    if longer:
        return sum(longer) / len(longer)
    if row.step and max_steps:
        return age * max(0, max_steps - row.step) / row.step
    return 0.0


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_number(v, spec: str = ".4g") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={fmt_number(v, '.3g') if isinstance(v, float) else v}" for k, v in params.items())


def fmt_step(row: TrialRow, max_steps: int | None) -> str:
    if row.step is None:
        return "-"
    return f"{row.step}/{max_steps}" if max_steps else str(row.step)


def fmt_eta(p: Progress) -> str:
    eta = p.eta_s()
    return "~" + fmt_duration(eta) if eta is not None else "after the first trial ends"


def fmt_counts(p: Progress, sep: str = ", ") -> str:
    return sep.join(f"{state} {n}" for state, n in p.counts().items())


def who(row: TrialRow) -> str:
    """A trial as a line names it: its study, and a replicate's seed."""
    return row.study if row.seed is None else f"{row.study} seed {row.seed}"


def result_words(row: TrialRow) -> str:
    """'objective X' for a completed trial, 'val_ppl X' for any other; then 'min seen Y'."""
    value = f"objective {fmt_number(row.objective)}" if row.state == COMPLETED else f"val_ppl {fmt_number(row.val_ppl)}"
    return f"{value} min seen {fmt_number(row.min_val_ppl)}"


def summary_line(p: Progress) -> str:
    """One line: how far the sweep is, and its trials per state."""
    return (f"[{len(p.ended)}/{p.total} ended] elapsed {fmt_duration(p.elapsed_s)}, ETA {fmt_eta(p)} | "
            f"{fmt_counts(p)}")


def ended_line(p: Progress, row: TrialRow) -> str:
    """One line for a trial that just ended."""
    return (f"{len(p.ended)}/{p.total} {row.trial_id} {who(row)} {row.state} step {fmt_step(row, p.max_steps)} "
            f"{result_words(row)} {fmt_duration(row.seconds(p.elapsed_s))}  {fmt_params(row.params)}").rstrip()
