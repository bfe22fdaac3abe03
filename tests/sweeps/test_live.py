"""The live view on real Tune trial objects, fed the callback events Tune sends, in Tune's order.

Both renderers: one in-place `rich` view in a terminal (its height does not grow with the
number of trials), one line per ended trial plus bounded summaries everywhere else.
"""

from __future__ import annotations

import io
import re

import pytest
import ray.cloudpickle as pickle
from ray.tune.experiment import Trial

from sweeps.console import LineRenderer, LiveRenderer
from sweeps.live import LiveView, trial_state
from sweeps.progress import Progress, TrialRow
from sweeps.study import COMPLETED, DIVERGED, FAILED, PENDING, RUNNING, STOPPED_EARLY

STUDIES = ["demo-xs/baseline", "demo-xs/both", "demo-s/baseline", "demo-s/both"]
COLOR = re.compile(r"\x1b\[(?:\d+;)*(?:3[0-8]|9[0-7])(?:;\d+)*m")  # an SGR sequence that sets a colour


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trial(i: int, study: str) -> Trial:
    scale, arm = study.split("/")
    return Trial("kdsweep_trial", trial_id=f"t{i:05d}", stub=True,
                 config={"study": study, "scale": scale, "arm": arm, "optuna_number": i, "lr": 1e-3, "alpha": 0.5})


def _result(step: int, *, done=False, diverged=False, seconds=10.0) -> dict:
    r = {"step": step, "val_ppl": 20.0 - step / 10, "best_val_ppl": 19.0, "done_training": done,
         "time_total_s": seconds, "training_iteration": step // 4}
    return r | ({"diverged": True, "val_ppl": float("inf")} if diverged else {})


def _run(view: LiveView, trials: list[Trial], outcome: str, steps=(4, 8), step_events=3) -> None:
    """One trial from start to end, as Tune's controller calls the callbacks."""
    t = trials[-1]
    t.set_status(Trial.RUNNING)
    view.on_trial_start(iteration=0, trials=trials, trial=t)
    for step in steps:
        t.update_last_result(_result(step, done=outcome == COMPLETED and step == steps[-1],
                                     diverged=outcome == DIVERGED and step == steps[-1]))
        view.on_trial_result(iteration=0, trials=trials, trial=t, result=t.last_result)
        for _ in range(step_events):
            view.on_step_end(iteration=0, trials=trials)
    if outcome == FAILED:
        t.set_status(Trial.ERROR)  # Tune sets ERROR, then calls on_trial_error
        view.on_trial_error(iteration=0, trials=trials, trial=t)
    else:
        view.on_trial_complete(iteration=0, trials=trials, trial=t)  # still RUNNING here
        t.set_status(Trial.TERMINATED)


OUTCOMES = [COMPLETED, STOPPED_EARLY, COMPLETED, DIVERGED, STOPPED_EARLY, COMPLETED,
            FAILED, STOPPED_EARLY, COMPLETED, COMPLETED, STOPPED_EARLY, COMPLETED]


def _sweep(view: LiveView, outcomes=OUTCOMES, step_events=3) -> list[Trial]:
    view.setup()
    trials = []
    for i, outcome in enumerate(outcomes):
        trials.append(_trial(i, STUDIES[i % len(STUDIES)]))
        _run(view, trials, outcome, step_events=step_events)
    view.on_experiment_end(trials=trials)
    return trials


def test_state_comes_from_the_last_result_not_tunes_status():
    t = _trial(0, STUDIES[0])
    assert trial_state(t) == PENDING
    t.set_status(Trial.RUNNING)
    assert trial_state(t) == RUNNING
    t.set_status(Trial.TERMINATED)
    for result, state in [(_result(8, done=True), COMPLETED), (_result(4), STOPPED_EARLY),
                          (_result(3, diverged=True), DIVERGED)]:
        t.update_last_result(result)
        assert trial_state(t) == state
    t.set_status(Trial.ERROR)
    assert trial_state(t) == FAILED


def test_lines_one_per_ended_trial_and_a_final_summary(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")  # not a terminal all the same: a pipe, CI, a log file
    out = io.StringIO()
    view = LiveView("sweep demo", {s: 3 for s in STUDIES}, max_steps=8, out=out)
    _sweep(view, step_events=50)  # Tune's loop steps far more often than trials end
    lines = out.getvalue().splitlines()
    assert len(lines) == len(OUTCOMES) + 1  # no periodic summary within 300 s
    for i, (line, outcome) in enumerate(zip(lines, OUTCOMES)):
        assert f" {i + 1}/12 t{i:05d} {STUDIES[i % 4]} {outcome} step " in line, line
    assert re.search(r"\[12/12 ended\] elapsed \d+s, ETA ~0s \| pending 0, running 0, stopped_early 4, "
                     r"completed 6, diverged 1, failed 1$", lines[-1]), lines[-1]
    assert "terminated" not in out.getvalue().lower()
    assert "\x1b[" not in out.getvalue()


def test_lines_add_a_summary_every_period(monkeypatch):
    out = io.StringIO()
    view = LiveView("sweep demo", {s: 3 for s in STUDIES}, out=out, summary_every_s=0.0)
    view.setup()
    monkeypatch.setattr("sweeps.live.REDRAW_S", 0.0)
    trials = [_trial(0, STUDIES[0])]
    _run(view, trials, COMPLETED, steps=(4,), step_events=2)
    lines = out.getvalue().splitlines()
    # every update is due for a summary: the result, two loop steps, and the end (with its ended line)
    assert [("ended" in line.split("]")[0]) for line in lines] == [True, True, True, False, True]
    assert "[0/12 ended]" in lines[0] and "ETA after the first trial ends" in lines[0]
    assert "[1/12 ended]" in lines[-1] and "ETA ~" in lines[-1]


@pytest.mark.parametrize("term, tty, renderer", [("xterm-256color", True, LiveRenderer),
                                                 ("dumb", True, LineRenderer),
                                                 ("xterm-256color", False, LineRenderer)])
def test_renderer_follows_the_output(monkeypatch, term, tty, renderer):
    monkeypatch.setenv("TERM", term)
    view = LiveView("sweep demo", {STUDIES[0]: 1}, out=Tty() if tty else io.StringIO())
    view.setup()
    assert type(view._renderer) is renderer
    view.on_experiment_end(trials=[])


def _frame_lines(view: LiveView, trials: list[Trial]) -> list[str]:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(view._renderer.frame(view.progress(trials)))
    return console.export_text().splitlines()


def test_terminal_view_is_one_frame_redrawn_in_place(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Tty()
    budgets = {s: 10 for s in STUDIES}  # 40 planned
    view = LiveView("sweep demo", budgets, max_steps=8, out=out)
    view.setup()
    trials, heights = [], []
    for i in range(32):
        trials.append(_trial(i, STUDIES[i % 4]))
        _run(view, trials, [COMPLETED, STOPPED_EARLY][i % 2], step_events=1)
        heights.append(len(_frame_lines(view, trials)))
    running = _trial(32, STUDIES[0])
    trials.append(running)
    running.set_status(Trial.RUNNING)
    running.update_last_result(_result(4, seconds=3.0))
    trials.append(_trial(33, STUDIES[1]))  # created by Tune, waiting for resources
    frame = "\n".join(_frame_lines(view, trials))
    assert heights[5:] == [heights[5]] * len(heights[5:])  # once 5 ended, the frame stops growing
    assert heights[-1] <= 11
    # ETA: 7 not started x 10 s (the ended trials' mean) + 10 - 3 s left of the running one, 1 at a time
    assert re.search(r"sweep demo +elapsed \d+s +ETA ~1m17s +32/40 ended", frame), frame
    assert "pending 7   running 1   stopped_early 16   completed 16   diverged 0   failed 0" in frame
    assert "demo-xs/baseline 8/10  demo-xs/both 8/10  demo-s/baseline 8/10  demo-s/both 8/10" in frame
    assert re.search(r"t00032 +demo-xs/baseline +running +4/8 +19\.6 +19 +3s +lr=0\.001 alpha=0\.5", frame), frame
    assert re.search(r"t00033 +demo-xs/both +pending", frame), frame
    assert "last 5 ended" in frame and "t00031" in frame and "t00026" not in frame
    view.on_experiment_end(trials=trials)
    raw = out.getvalue()
    assert "\x1b[1A" in raw and "\x1b[2K" in raw  # cursor up, erase line: redrawn in place
    assert COLOR.search(raw)  # states are coloured
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.rstrip().splitlines()[-1])
    assert last.startswith("sweep demo: [32/40 ended]"), last  # the view gives way to one line


def test_no_color_is_honoured(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    out = Tty()
    _sweep(LiveView("sweep demo", {s: 3 for s in STUDIES}, out=out))
    assert "\x1b[1A" in out.getvalue() and not COLOR.search(out.getvalue())


def test_eta_from_ended_trials_and_the_parallelism_seen():
    ended = [TrialRow(f"e{i}", STUDIES[0], COMPLETED, seconds=100.0) for i in range(2)]
    running = [TrialRow("r0", STUDIES[1], RUNNING, seconds=30.0), TrialRow("r1", STUDIES[1], RUNNING, seconds=60.0)]
    p = Progress(tuple(ended + running), ("e0", "e1"), {STUDIES[0]: 5, STUDIES[1]: 5}, 250.0, peak_running=2)
    # 6 not started x 100 s + (100 - 30) + (100 - 60) s of running trials, 2 at a time
    assert p.eta_s() == pytest.approx((6 * 100 + 70 + 40) / 2)
    assert p.counts() == {PENDING: 6, RUNNING: 2, STOPPED_EARLY: 0, COMPLETED: 2, DIVERGED: 0, FAILED: 0}
    assert p.per_study() == [(STUDIES[0], 2, 5), (STUDIES[1], 0, 5)]
    assert Progress(tuple(running), (), {STUDIES[1]: 5}, 60.0, peak_running=2).eta_s() is None


def test_tune_can_pickle_the_view_with_the_experiment(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    view = LiveView("sweep demo", {STUDIES[0]: 3}, max_steps=8, out=Tty())
    view.setup()  # a live renderer holds the terminal: it must not travel
    copy = pickle.loads(pickle.dumps(view))
    assert (copy.title, copy.budgets, copy.max_steps, copy._out, copy._renderer) == (
        "sweep demo", {STUDIES[0]: 3}, 8, None, None)
    view.on_experiment_end(trials=[])
