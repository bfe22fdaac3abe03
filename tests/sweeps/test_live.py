"""The live view on real Tune trial objects, fed the callback events Tune sends, in Tune's order.

Both renderers: one in-place `rich` view in a terminal (its height does not grow with the
number of trials; it fits 80, 120 and 200 columns by column priority), one line per ended
trial plus bounded summaries everywhere else. The ETA on simulated sweeps with a known end.
(A real sweep in tmux at three widths: tests/sweeps/test_live_tmux.py.)
"""

from __future__ import annotations

import io
import logging
import random
import re
import sys

import pytest
import ray.cloudpickle as pickle
from ray.tune.experiment import Trial
from rich.console import Console

from sweeps.console import LineRenderer, LiveRenderer, closing_lines, fit_height, frame_lines
from sweeps.live import LiveView, SlowStepNote, trial_state
from sweeps.progress import STARTING, Progress, TrialRow
from sweeps.study import COMPLETED, DIVERGED, FAILED, PENDING, RUNNING, STOPPED_EARLY
from sweeps.textfit import Column, command_lines, fit_columns

STUDIES = ["demo-xs/baseline", "demo-xs/both", "demo-s/baseline", "demo-s/both"]
COLOR = re.compile(r"\x1b\[(?:\d+;)*(?:3[0-8]|9[0-7])(?:;\d+)*m")  # an SGR sequence that sets a colour
STATES = (STARTING, RUNNING, COMPLETED, STOPPED_EARLY, DIVERGED, FAILED)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trial(i: int, study: str, **extra) -> Trial:
    scale, arm = study.split("/")
    return Trial("kdsweep_trial", trial_id=f"t{i:05d}", stub=True,
                 config={"study": study, "scale": scale, "arm": arm, "optuna_number": i, "lr": 1e-3, "alpha": 0.5,
                         **extra})


def _result(step: int, *, done=False, diverged=False, seconds=10.0) -> dict:
    r = {"step": step, "val_ppl": 20.0 - step / 10, "best_val_ppl": 19.0, "done_training": done,
         "time_total_s": seconds, "training_iteration": step // 4}
    return r | ({"diverged": True, "val_ppl": float("inf")} if diverged else {})


def _run(view: LiveView, trials: list[Trial], outcome: str, steps=(4, 8), step_events=3) -> None:
    """One trial from start to end, as Tune's controller calls the callbacks."""
    t = trials[-1]
    view.on_trial_add(iteration=0, trials=trials, trial=t)
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
    assert trial_state(t) == STARTING  # created by Tune: handed out, its process not started yet
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
        # one word per meaning: a completed trial's final val_ppl is its objective; the lowest seen is "min seen"
        value = "objective 19.2" if outcome == COMPLETED else ("val_ppl inf" if outcome == DIVERGED else "val_ppl 19.2")
        assert f" {value} min seen 19 " in line, line
        assert "best" not in line
    assert re.search(r"\[12/12 ended\] elapsed \d+s, ETA ~0s \| pending 0, starting 0, running 0, "
                     r"stopped_early 4, completed 6, diverged 1, failed 1$", lines[-1]), lines[-1]
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


def _frame_text(title: str, p: Progress, width: int, height: int = 40) -> list[str]:
    console = Console(file=io.StringIO(), width=width, record=True)
    for line in frame_lines(title, p, width, height):
        console.print(line)
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
        heights.append(len(_frame_text("sweep demo", view.progress(trials), 160)))
    running = _trial(32, STUDIES[0])
    trials.append(running)
    view.on_trial_add(iteration=0, trials=trials, trial=running)
    running.set_status(Trial.RUNNING)
    running.update_last_result(_result(4, seconds=3.0))
    trials.append(_trial(33, STUDIES[1]))  # created by Tune, its process starting
    frame = "\n".join(_frame_text("sweep demo", view.progress(trials), 160))
    assert heights[5:] == [heights[5]] * len(heights[5:])  # once 5 ended, the frame stops growing
    assert heights[-1] <= 13
    assert re.search(r"sweep demo +elapsed \d+s +ETA ~\d+s +32/40 ended", frame), frame
    assert "pending 6   starting 1   running 1   stopped_early 16   completed 16   diverged 0   failed 0" in frame
    assert "demo-xs:  baseline 8/10  both 8/10" in frame and "demo-s:  baseline 8/10  both 8/10" in frame
    assert re.search(r"t00032 +demo-xs/baseline +running +4/8 +19\.6 +19 +\d+s +lr=0\.001 alpha=0\.5", frame), frame
    assert re.search(r"t00033 +demo-xs/both +starting", frame), frame
    assert re.search(r"trial +study +state +step +val_ppl +min seen +time +params", frame), frame
    assert re.search(r"trial +study +state +step +objective +min seen +time", frame), frame
    assert "last 5 ended" in frame and "t00031" in frame and "t00026" not in frame
    view.on_experiment_end(trials=trials)
    raw = out.getvalue()
    assert "\x1b[1A" in raw and "\x1b[2K" in raw  # cursor up, erase line: redrawn in place
    assert COLOR.search(raw)  # states are coloured
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.rstrip()).splitlines()
    # the view gives way to a summary (it was interrupted: ETA, and the trials not ended)
    assert last[-2].startswith("sweep demo: 32/40 ended in"), last[-2:]
    assert "ETA ~" in last[-2] and "pending 6" in "".join(last[-2:])


def test_no_color_is_honoured(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    out = Tty()
    _sweep(LiveView("sweep demo", {s: 3 for s in STUDIES}, out=out))
    assert "\x1b[1A" in out.getvalue() and not COLOR.search(out.getvalue())


# ---- widths ------------------------------------------------------------------------------------

LONG_PARAMS = {"lr": 0.00265, "warmup_steps": 4, "temperature": 3.38, "alpha": 0.523, "smoothing": 0.0412}


def _busy_progress(replicates: bool = False) -> Progress:
    """A sweep of two scales x four arms mid-way: 2 running, 1 starting, 6 ended."""
    studies = [f"{s}/{a}" for s in ("demo-xs", "demo-s") for a in ("baseline", "uncertainty", "calibration", "both")]
    seed = (lambda i: 1 + i % 3) if replicates else (lambda i: None)
    ids = (lambda i: f"a7243_{i:05d}") if replicates else (lambda i: f"f03a32{i:02d}")
    ended = [TrialRow(ids(i), studies[i], [COMPLETED, STOPPED_EARLY, DIVERGED][i % 3], [16, 4, 7][i % 3], 19.04,
                      19.01, 10.0 * i, 10.0 * i + 40, LONG_PARAMS, seed(i)) for i in range(6)]
    active = [TrialRow(ids(6), studies[6], RUNNING, 8, 20.01, 19.98, 60.0, None, LONG_PARAMS, seed(6)),
              TrialRow(ids(7), studies[7], RUNNING, 12, 19.5, 19.5, 70.0, None, LONG_PARAMS, seed(7)),
              TrialRow(ids(8), studies[2], STARTING, None, None, None, 95.0, None, LONG_PARAMS, seed(8))]
    return Progress(tuple(ended + active), tuple(r.trial_id for r in ended), {s: 3 for s in studies}, 100.0, 16, 3)


def _table_rows(lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(r"demo-(xs|s)/", line) and ":" not in line]


@pytest.mark.parametrize("width", [80, 120, 200])
@pytest.mark.parametrize("replicates", [False, True])
def test_the_frame_fits_the_width_by_column_priority(width, replicates):
    p = _busy_progress(replicates)
    lines = _frame_text("replicates of demo" if replicates else "sweep demo", p, width)
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    rows = _table_rows(lines)
    assert len(rows) == 3 + 5
    states = "|".join(STATES)
    for line in rows:  # the study (scale/arm) and the state are never cut; a replicate row names its seed
        seed = r" +[123]" if replicates else ""
        assert re.search(rf"(^| )demo-(xs|s)/(baseline|uncertainty|calibration|both){seed} +({states})( |$)", line), line
        trial = re.match(r"(a7243_|f03a32)\S*", line)
        assert trial is None or re.fullmatch(r"a7243_\d{5}|f03a32\d\d", trial.group()), line  # an id whole, or none
    running = "\n".join(rows[:2])
    if width == 200:
        assert "smoothing=0.0412" in running  # params whole
    elif width == 120:
        assert "lr=0.00265" in running and "…" in running  # params cut to fit
    else:
        assert "lr=" not in running and "…" not in running  # params dropped, nothing cut
    for line in closing_lines("sweep demo", p, width):
        assert len(line) <= width


def test_columns_go_by_priority():
    columns = [Column("study"), Column("state"), Column("step", 1), Column("time", 3), Column("params", 5, cut=True)]
    rows = [["demo-xs/calibration", "stopped_early", "16/16", "1m02s", "lr=0.00265 warmup_steps=4 alpha=0.5"]]
    widths = {n: dict(fit_columns(columns, rows, n)) for n in (100, 70, 60, 45, 10)}
    assert widths[100] == {0: 19, 1: 13, 2: 5, 3: 5, 4: 35}  # everything whole
    assert widths[70] == {0: 19, 1: 13, 2: 5, 3: 5, 4: 70 - 19 - 13 - 5 - 5 - 8}  # params cut
    assert widths[60] == {0: 19, 1: 13, 2: 5, 3: 5}  # params narrower than 16: dropped
    assert widths[45] == {0: 19, 1: 13, 2: 5}  # then time
    assert widths[10] == {0: 19, 1: 13}  # priority 0 is never dropped nor cut


def test_the_frame_fits_the_height():
    assert fit_height(40, 3, 5) == (3, 5)
    assert fit_height(12, 3, 5) == (3, 4)  # the ended list shrinks first
    assert fit_height(9, 3, 5) == (3, 1)  # down to one
    assert fit_height(8, 3, 5) == (3, 0)  # then none
    assert fit_height(4, 3, 5) == (1, 0)  # then fewer trials in flight (and a line says how many more)
    lines = _frame_text("sweep demo", _busy_progress(), 120, height=9)
    assert len(lines) <= 8 and "... and 2 more in flight" in lines[-1], lines


def test_commands_keep_their_comments_aligned_or_above():
    commands = [("kdsweep sweep status demo", "trials per (scale, arm)"), ("kdsweep analyze demo", "tables")]
    wide = command_lines(commands, 120)
    assert wide == ["  kdsweep sweep status demo   # trials per (scale, arm)",
                    "  kdsweep analyze demo        # tables"]
    assert command_lines(commands, 40) == ["  # trials per (scale, arm)", "  kdsweep sweep status demo",
                                           "  # tables", "  kdsweep analyze demo"]


# ---- what else writes to the terminal --------------------------------------------------------


def test_log_lines_go_above_the_live_region_and_handlers_are_restored(monkeypatch):
    """A handler made before the view (Ray's own) writes to the real stderr: while the view is up it
    writes through rich, above the region, and afterwards to stderr again."""
    monkeypatch.setenv("TERM", "xterm-256color")
    handler = logging.StreamHandler(sys.__stderr__)
    logger = logging.getLogger("kdsweep.test.ray_like")
    logger.addHandler(handler)
    try:
        out = Tty()
        renderer = LiveRenderer(out, "sweep demo")
        assert handler.stream is sys.stderr and handler.stream is not sys.__stderr__  # rich's proxy
        logger.warning("a line from Ray while the view is up")
        renderer.update(_busy_progress())
        renderer.close(_busy_progress())
        assert handler.stream is sys.__stderr__
        assert "a line from Ray while the view is up" in out.getvalue()  # written by rich, above the view
    finally:
        logger.removeHandler(handler)


def test_tunes_bottleneck_warnings_are_explained_once():
    notes = []
    note = SlowStepNote(notes.append)
    slow = [logging.LogRecord("ray.tune.utils.util", logging.WARNING, "", 0, msg, None, None) for msg in (
        "The `callbacks.on_trial_result` operation took 1.234 s, which may be a performance bottleneck.",
        "Processing trial results took 0.9 s, which may be a performance bottleneck. Please consider reporting "
        "results less frequently to Ray Tune.")]
    other = logging.LogRecord("ray.tune.utils.util", logging.WARNING, "", 0, "something else", None, None)
    assert [note.filter(r) for r in slow + slow + [other]] == [False, False, False, False, True]
    assert len(notes) == 1 and "1.2 s in callbacks.on_trial_result" in notes[0] and "not shown" in notes[0]


# ---- the ETA ---------------------------------------------------------------------------------


def test_eta_counts_start_up_and_the_slots_reached():
    # two ended trials held their slot 100 s each (start-up included); one in flight 30 s, one 60 s
    ended = [TrialRow(f"e{i}", STUDIES[0], COMPLETED, started_s=0.0, ended_s=100.0) for i in range(2)]
    active = [TrialRow("r0", STUDIES[1], RUNNING, started_s=220.0), TrialRow("r1", STUDIES[1], STARTING, started_s=190.0)]
    p = Progress(tuple(ended + active), ("e0", "e1"), {STUDIES[0]: 5, STUDIES[1]: 5}, 250.0, slots=2)
    # in flight: 70 s and 40 s left; 6 not handed out, 100 s each, on 2 slots: 40+100+100+100, 70+100+100+100
    assert p.eta_s() == pytest.approx(370.0)
    assert p.counts() == {PENDING: 6, STARTING: 1, RUNNING: 1, STOPPED_EARLY: 0, COMPLETED: 2, DIVERGED: 0, FAILED: 0}
    assert p.per_study() == [(STUDIES[0], 2, 5), (STUDIES[1], 0, 5)]
    assert Progress(tuple(active), (), {STUDIES[1]: 5}, 60.0, slots=2).eta_s() is None


def _simulated_sweep(seed: int, n: int = 24, slots: int = 2, start_up: float = 10.0) -> list[tuple[float, float]]:
    """(start, end) of every trial of an ASHA-like sweep: each trial holds a slot for start_up + its
    training, 40 s trained to the end or stopped at 10 or 20 s (stopping gets likelier as the sweep
    goes, as ASHA's rungs fill); a freed slot takes the next trial at once."""
    rng = random.Random(seed)
    free, spans = [0.0] * slots, []
    for i in range(n):
        s = free.index(min(free))
        stop = rng.random() < 0.2 + 0.5 * i / n
        train = rng.choice([10.0, 20.0]) if stop else 40.0
        spans.append((free[s], free[s] + start_up + train * rng.uniform(0.8, 1.2)))
        free[s] = spans[-1][1]
    return spans


def _progress_at(spans: list[tuple[float, float]], t: float, slots: int) -> Progress:
    rows, order = [], []
    for i, (start, end) in sorted(enumerate(spans), key=lambda x: x[1][1]):
        if start > t:
            continue
        done = end <= t
        rows.append(TrialRow(f"t{i}", STUDIES[0], COMPLETED if done else RUNNING, started_s=start,
                             ended_s=end if done else None))
        order += [f"t{i}"] if done else []
    return Progress(tuple(rows), tuple(order), {STUDIES[0]: len(spans)}, t, slots=slots)


@pytest.mark.parametrize("seed", range(5))
def test_eta_within_30_percent_from_the_quarter_mark_on_simulated_sweeps(seed):
    """A known truth: simulated sweeps whose end is known. From a quarter of the sweep's wall time
    on, the ETA is within 30 % of the real time left."""
    spans = _simulated_sweep(seed)
    end = max(e for _, e in spans)
    errors = []
    for k in range(25, 96):
        t = end * k / 100
        eta = _progress_at(spans, t, 2).eta_s()
        errors.append(abs(eta - (end - t)) / (end - t))
    assert max(errors) <= 0.30, max(errors)


def test_tune_can_pickle_the_view_with_the_experiment(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    view = LiveView("sweep demo", {STUDIES[0]: 3}, max_steps=8, out=Tty())
    view.setup()  # a live renderer holds the terminal: it must not travel
    copy = pickle.loads(pickle.dumps(view))
    assert (copy.title, copy.budgets, copy.max_steps, copy._out, copy._renderer) == (
        "sweep demo", {STUDIES[0]: 3}, 8, None, None)
    view.on_experiment_end(trials=[])
