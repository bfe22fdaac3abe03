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
import statistics
from dataclasses import dataclass, field

from kdsweep.sweeps.study import COMPLETED, ENDED_STATES, PENDING, RUNNING

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
    first_report: tuple[int, float] | None = None  # (step, view time) of its first result
    last_report: tuple[int, float] | None = None  # (step, view time) of its latest result

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
class EarlyStopping:
    """ASHA per study (sweeps.scheduler): a trial that reports at a rung may be stopped there, the
    first trial of a study never is (nothing to compare it with), and about 1 / reduction_factor
    of the trials reaching a rung go on to the next. The last rung is the full budget."""

    rungs: tuple[int, ...]
    reduction_factor: float

    def expected_final(self, reached: int | None) -> tuple[float, float]:
        """(expected last step, chance of the full budget) of a trial that may be stopped, having
        reported step `reached` and gone on (None: not started)."""
        ahead = [r for r in self.rungs if reached is None or r > reached]
        if not ahead:
            return float(reached), 1.0
        steps, chance = float(ahead[0]), 1.0
        for prev, rung in zip(ahead, ahead[1:]):
            chance /= self.reduction_factor
            steps += (rung - prev) * chance
        return steps, chance


@dataclass(frozen=True)
class Progress:
    rows: tuple[TrialRow, ...]  # every trial Tune holds, in the order they were created
    ended_order: tuple[str, ...]  # ids of the trials that ended in this run, in that order
    budgets: dict[str, int]  # study -> trials planned
    elapsed_s: float
    max_steps: int | None = None
    slots: int = 0  # the most trials seen in flight (starting or running) at once: the parallelism reached
    early_stopping: EarlyStopping | None = None  # None: every trial trains its full budget

    @classmethod
    def from_dict(cls, d: dict) -> Progress:
        """The inverse of `dataclasses.asdict` (a recording of the view, read back from JSON)."""
        pairs = ("first_report", "last_report")
        rows = tuple(TrialRow(**{**r, **{k: tuple(r[k]) for k in pairs if r.get(k)}}) for r in d["rows"])
        rule = d.get("early_stopping")
        return cls(**{**d, "rows": rows, "ended_order": tuple(d["ended_order"]),
                      "early_stopping": EarlyStopping(tuple(rule["rungs"]), rule["reduction_factor"]) if rule else None})

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
        """Seconds until every planned trial has ended; None until a trial has reported twice.

        A trial holds its slot for its start-up, its steps at its study's pace, and a tail (the
        final save; a replicate's test scoring). All three are measured on this sweep's trials
        from the view's own clock: start-up from Tune creating a trial to its first report (less
        the steps before it), the pace between its first and latest report (per study, else per
        scale, else overall), the tail from its last report to its end. How many steps a trial
        will train comes from the early-stopping rule (`EarlyStopping`): the full budget for the
        first trial of a study or without early stopping, else the rungs it is expected to reach.
        The trials in flight finish what is left of theirs, the others follow in the order they
        are handed out (round-robin over the studies), each taking the slot that frees first on
        `slots` slots, the parallelism reached; the ETA is when the last slot frees.
        """
        if not self.max_steps:
            return None
        est = _Estimate(self)
        if not est.paces:
            return None
        pending, active = est.pending(), self.active
        if not pending and not active:
            return 0.0
        busy = sorted(est.left(r) for r in active)
        n_slots = max(1, self.slots, len(active))
        free_at = busy[-n_slots:] + [0.0] * max(0, n_slots - len(busy))
        heapq.heapify(free_at)
        for study, ordinal in pending:
            heapq.heappush(free_at, heapq.heappop(free_at) + est.duration(study, ordinal))
        return max(free_at)


class _Estimate:
    """What `Progress.eta_s` measures on the trials so far: start-up, pace per study, tail."""

    def __init__(self, p: Progress):
        self.p = p
        self.ordinal: dict[str, int] = {}  # trial id -> 1 for the first trial of its study, 2, ...
        seen: dict[str, int] = {}
        for r in p.rows:
            seen[r.study] = self.ordinal[r.trial_id] = seen.get(r.study, 0) + 1
        self.handed_out = seen
        paces: dict[str, list[float]] = {}
        starts, tails = [], []
        for r in p.rows:
            pace = _pace(r)
            if pace is None:
                continue
            paces.setdefault(r.study, []).append(pace)
            (k1, t1), (_, t2) = r.first_report, r.last_report
            if r.started_s is not None:
                starts.append(max(0.0, t1 - r.started_s - k1 * pace))
            if r.ended_s is not None and r.state == COMPLETED:
                tails.append(max(0.0, r.ended_s - t2))
        self.paces = {study: statistics.median(v) for study, v in paces.items()}
        self.start_up = statistics.median(starts) if starts else 0.0
        self.tail = statistics.median(tails) if tails else 0.0

    def pace(self, study: str) -> float:
        """Seconds per step: the study's, else its scale's, else every study's (medians)."""
        if study in self.paces:
            return self.paces[study]
        scale = study.rpartition("/")[0]
        same = [v for s, v in self.paces.items() if s.rpartition("/")[0] == scale]
        return statistics.median(same or list(self.paces.values()))

    def final(self, ordinal: int, reached: int | None) -> tuple[float, float]:
        """(expected last step, chance of the full budget) of a study's `ordinal`-th trial."""
        rule = self.p.early_stopping
        if rule is None or ordinal == 1:
            return float(self.p.max_steps), 1.0
        return rule.expected_final(reached)

    def duration(self, study: str, ordinal: int) -> float:
        steps, full = self.final(ordinal, None)
        return self.start_up + steps * self.pace(study) + full * self.tail

    def left(self, r: TrialRow) -> float:
        """Seconds left of a trial in flight."""
        now, ordinal = self.p.elapsed_s, self.ordinal[r.trial_id]
        if r.last_report is None:  # starting, or running before its first report
            return max(0.0, self.duration(r.study, ordinal) - (r.seconds(now) or 0.0))
        step, at = r.last_report
        steps, full = self.final(ordinal, step)
        pace = _pace(r) or self.pace(r.study)
        return max(0.0, (steps - step) * pace - (now - at)) + full * self.tail

    def pending(self) -> list[tuple[str, int]]:
        """(study, ordinal) of every trial not handed out yet, in the searcher's round-robin order."""
        out = [(study, k) for study, budget in self.p.budgets.items()
               for k in range(self.handed_out.get(study, 0) + 1, budget + 1)]
        order = list(self.p.budgets)
        return sorted(out, key=lambda x: (x[1], order.index(x[0])))


def _pace(r: TrialRow) -> float | None:
    """Seconds per step between a trial's first and latest report."""
    if r.first_report is None or r.last_report is None or r.last_report[0] <= r.first_report[0]:
        return None
    return (r.last_report[1] - r.first_report[1]) / (r.last_report[0] - r.first_report[0])


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


def fmt_eta(p: Progress, unknown: str = "once a trial has reported twice") -> str:
    eta = p.eta_s()
    return "~" + fmt_duration(eta) if eta is not None else unknown


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
