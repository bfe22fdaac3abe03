"""A running sweep at one moment: its trials by state, progress per study, and an ETA.

Ray-free: `sweeps.live` builds a `Progress` from Tune's trial objects at every event,
`sweeps.console` draws it (an in-place view in a terminal, short lines otherwise).
States are the `sweeps.study` vocabulary, plus `pending` for trials of the budget
that have not started.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sweeps.study import ENDED_STATES, PENDING, RUNNING


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    study: str
    state: str
    step: int | None = None
    val_ppl: float | None = None
    best_val_ppl: float | None = None
    seconds: float | None = None  # wall time the trial has run (Tune's time_total_s)
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    rows: tuple[TrialRow, ...]  # every trial Tune holds, in the order they were created
    ended_order: tuple[str, ...]  # ids of the ended trials, in the order they ended
    budgets: dict[str, int]  # study -> trials planned
    elapsed_s: float
    max_steps: int | None = None
    peak_running: int = 0  # the most trials seen running at once

    @property
    def total(self) -> int:
        return sum(self.budgets.values())

    def _in(self, *states: str) -> list[TrialRow]:
        return [r for r in self.rows if r.state in states]

    @property
    def running(self) -> list[TrialRow]:
        return self._in(RUNNING)

    @property
    def started_pending(self) -> list[TrialRow]:
        """Trials Tune created that have not started (waiting for resources)."""
        return self._in(PENDING)

    @property
    def ended(self) -> list[TrialRow]:
        return self._in(*ENDED_STATES)

    def counts(self) -> dict[str, int]:
        """Trials per state; `pending` counts the whole budget not yet started."""
        ended = {s: len(self._in(s)) for s in ENDED_STATES}
        running = len(self.running)
        return {PENDING: max(0, self.total - running - sum(ended.values())), RUNNING: running, **ended}

    def per_study(self) -> list[tuple[str, int, int]]:
        """(study, ended trials, planned trials) in budget order."""
        ended = [r.study for r in self.ended]
        return [(study, ended.count(study), budget) for study, budget in self.budgets.items()]

    def last_ended(self, k: int) -> list[TrialRow]:
        by_id = {r.trial_id: r for r in self.ended}
        return [by_id[t] for t in self.ended_order[-k:] if t in by_id]

    def eta_s(self) -> float | None:
        """Seconds until every planned trial has ended; None until one trial has ended.

        Estimated from the trials that ended: their mean wall time (early stops and
        divergences included, so the estimate expects the same share of them from now on)
        for each trial not started yet, plus for each running trial that mean minus its age
        (at least 0); the sum is divided by the parallelism seen so far (the most trials
        that ran at once), capped by the number of trials left.
        """
        durations = [r.seconds for r in self.ended if r.seconds is not None]
        if not durations:
            return None
        mean = sum(durations) / len(durations)
        counts = self.counts()
        work = counts[PENDING] * mean + sum(max(0.0, mean - (r.seconds or 0.0)) for r in self.running)
        left = counts[PENDING] + counts[RUNNING]
        if left == 0:
            return 0.0
        return work / max(1, min(self.peak_running, left))


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


def summary_line(p: Progress) -> str:
    """One line: how far the sweep is, and its trials per state."""
    eta = p.eta_s()
    counts = ", ".join(f"{state} {n}" for state, n in p.counts().items())
    return (f"[{len(p.ended)}/{p.total} ended] elapsed {fmt_duration(p.elapsed_s)}, "
            f"ETA {'~' + fmt_duration(eta) if eta is not None else 'after the first trial ends'} | {counts}")


def ended_line(p: Progress, row: TrialRow) -> str:
    """One line for a trial that just ended."""
    return (f"{len(p.ended)}/{p.total} {row.trial_id} {row.study} {row.state} step {fmt_step(row, p.max_steps)} "
            f"val_ppl {fmt_number(row.val_ppl)} best {fmt_number(row.best_val_ppl)} "
            f"{fmt_duration(row.seconds)}  {fmt_params(row.params)}").rstrip()
