"""How a running sweep is shown: one in-place view in a terminal, short lines everywhere else.

* `LiveRenderer` (a terminal): one `rich.live.Live` region redrawn in place: a header with
  elapsed time, ETA, trials per state and progress per study; the trials in flight; the
  last few that ended. It fits the terminal's width and height at every redraw (`frame`):
  columns go by priority (study, a replicate's seed and state are never cut; params are
  cut first, then dropped; then time, trial id, ...), and it is removed at the end,
  leaving a summary that fits the width. While it is up, the live region owns the
  terminal: Python's log handlers write above it (through rich), so no line written
  meanwhile leaves a stale copy of the view behind.
* `LineRenderer` (CI, `nohup`, a log file, a pipe, `TERM=dumb`): one line per trial
  that ends, and a summary line every `summary_every_s` and at the end.

`NO_COLOR` is honoured by `rich` itself.
"""

from __future__ import annotations

import atexit
import logging
import sys
import time
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from kdsweep.sweeps.progress import (
    STARTING,
    Progress,
    TrialRow,
    ended_line,
    fmt_duration,
    fmt_eta,
    fmt_number,
    fmt_params,
    fmt_step,
    summary_line,
)
from kdsweep.sweeps.study import COMPLETED, DIVERGED, ENDED_STATES, FAILED, RUNNING, STOPPED_EARLY
from kdsweep.sweeps.textfit import GAP, Column, fitted_rows, is_interactive, pack

LAST_ENDED = 5  # ended trials the terminal view keeps on screen
STATE_STYLE = {COMPLETED: "green", STOPPED_EARLY: "yellow", DIVERGED: "red", FAILED: "bold red", RUNNING: "cyan",
               STARTING: "blue"}


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


class LineRenderer:
    def __init__(self, out: TextIO, summary_every_s: float = 300.0):
        self.out, self.every = out, summary_every_s
        self._last_summary = time.monotonic()

    def _write(self, line: str) -> None:
        self.out.write(f"{_stamp()}  {line}\n")
        self.out.flush()

    def note(self, line: str) -> None:
        self._write(line)

    def update(self, p: Progress, ended: TrialRow | None = None) -> None:
        if ended is not None:
            self._write(ended_line(p, ended))
        if time.monotonic() - self._last_summary >= self.every:
            self._last_summary = time.monotonic()
            self._write(summary_line(p))

    def close(self, p: Progress) -> None:
        self._write(summary_line(p))


class BuildProgress:
    """The progress of a long step before the trials (the teacher cache's build), told by
    `update(done, total)`: a bar in a terminal, else a line every `every_s` (none for a step that
    ends sooner). A context manager; the bar goes when the step ends."""

    def __init__(self, what: str, unit: str, out: TextIO | None = None, every_s: float = 30.0):
        self.what, self.unit, self.every = what, unit, every_s
        self.out = out or sys.stdout
        self._started = self._last = time.monotonic()
        self._bar = self._task = None

    def __enter__(self) -> BuildProgress:
        if is_interactive(self.out):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._bar = Progress(TextColumn(self.what), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                 MofNCompleteColumn(), TextColumn(self.unit), TimeElapsedColumn(),
                                 TextColumn("left"), TimeRemainingColumn(), console=Console(file=self.out),
                                 transient=True, auto_refresh=False)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, refresh=True)
        elif time.monotonic() - self._last >= self.every and total:
            self._last = time.monotonic()
            elapsed = self._last - self._started
            left = elapsed * (total - done) / done if done else None
            self.out.write(f"{_stamp()}  {self.what}: {100 * done / total:.0f}% ({done:,} of {total:,} {self.unit}), "
                           f"{fmt_duration(elapsed)}, ~{fmt_duration(left)} left\n")
            self.out.flush()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


class LiveRenderer:
    def __init__(self, out: TextIO, title: str):
        self.title = title
        self.console = Console(file=out)
        # Redrawn by the callback on Tune's own loop (auto_refresh off): no thread reads the trials.
        self.live = Live(console=self.console, auto_refresh=False, transient=True, vertical_overflow="crop")
        self.live.start()
        self._handlers = _route_log_handlers(sys.stderr)  # Live has made sys.stderr write above its region
        # A sweep that dies with an exception never reaches `close`: give the terminal its cursor back.
        atexit.register(self._stop)

    def _stop(self) -> None:
        self.live.stop()
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []

    def note(self, line: str) -> None:
        self.console.print(Text(line), soft_wrap=False)  # above the live region, wrapped at words

    def update(self, p: Progress, ended: TrialRow | None = None) -> None:
        self.live.update(self.frame(p), refresh=True)

    def close(self, p: Progress) -> None:
        self._stop()
        atexit.unregister(self._stop)
        for line in closing_lines(self.title, p, self.console.width):
            self.console.print(line, highlight=False, soft_wrap=True)

    def frame(self, p: Progress) -> Group:
        return Group(*frame_lines(self.title, p, self.console.width, self.console.height))


def _route_log_handlers(stream) -> list[tuple[logging.StreamHandler, object]]:
    """Point every log handler that writes to the terminal at `stream`; returns what to restore.

    Handlers (Ray's own among them) hold the stream they were created with, so their lines
    would otherwise land between two redraws and leave a copy of the view above them."""
    terminal = {id(s) for s in (sys.__stdout__, sys.__stderr__, getattr(stream, "rich_proxied_file", None)) if s}
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    routed = []
    for logger in loggers:
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and id(h.stream) in terminal:
                routed.append((h, h.setStream(stream)))
    return routed


# ---- the frame: fitted to the terminal ------------------------------------------------------


def table_lines(columns: list[Column], rows: list[list[str]], width: int) -> list[Text]:
    """A header and one line per row, fitted to `width` (`sweeps.textfit`); a `state` column
    coloured by state."""
    lines = []
    for n, line in enumerate(fitted_rows(columns, rows, width)):
        out = Text(style="bold" if n == 0 else "")
        for k, (col, text) in enumerate(line):
            out.append(" " * GAP if k else "")
            out.append(text, style=STATE_STYLE.get(text.strip(), "") if col.name == "state" and n else "")
        out.rstrip()
        lines.append(out)
    return lines


def _by_scale(p: Progress) -> list[list[Text]]:
    """Per scale: 'scale:' then 'arm done/planned' per study (a study is '<scale>/<arm>')."""
    groups: dict[str, list[Text]] = {}
    for study, done, budget in p.per_study():
        scale, _, arm = study.rpartition("/")
        groups.setdefault(scale, [Text(f"{scale}:", style="bold")]).append(
            Text(f"{arm} {done}/{budget}", style="green" if done == budget else ""))
    return list(groups.values())


def _trial_columns(p: Progress, result: str) -> list[Column]:
    seed = [Column("seed", 0, right=True)] if p.replicates else []
    columns = [Column("trial", 4), Column("study", 0), *seed, Column("state", 0), Column("step", 1, right=True),
               Column(result, 1, right=True), Column("min seen", 2, right=True), Column("time", 3, right=True)]
    return columns + ([Column("params", 5, cut=True)] if result == "val_ppl" else [])


def _cells(p: Progress, r: TrialRow, value: float | None, params: bool) -> list[str]:
    seed = [str(r.seed)] if p.replicates else []
    cells = [r.trial_id, r.study, *seed, r.state, fmt_step(r, p.max_steps), fmt_number(value),
             fmt_number(r.min_val_ppl), fmt_duration(r.seconds(p.elapsed_s))]
    return cells + ([fmt_params(r.params)] if params else [])


def frame_lines(title: str, p: Progress, width: int, height: int) -> list[Text]:
    """The view of `p` in at most `height - 1` lines of at most `width` columns."""
    head = pack([Text(title, style="bold"), Text(f"elapsed {fmt_duration(p.elapsed_s)}"),
                 Text(f"ETA {fmt_eta(p, '-')}"), Text(f"{len(p.ended)}/{p.total} ended")], width)
    head += pack([Text(f"{state} {n}", style=STATE_STYLE.get(state, "") if n else "dim")
                  for state, n in p.counts().items()], width)
    for group in _by_scale(p):
        head += pack(group, width, sep="  ", indent="    ")
    active, last = p.active, list(reversed(p.last_ended(LAST_ENDED)))
    n_active, n_last = fit_height(height - 1 - len(head), len(active), len(last))
    shown, last = active[:n_active], last[:n_last]
    lines = list(head)
    if active:
        rows = [_cells(p, r, r.val_ppl, True) for r in shown]
        lines += [Text("")] + table_lines(_trial_columns(p, "val_ppl"), rows, width)
        if len(shown) < len(active):
            lines.append(Text(f"... and {len(active) - len(shown)} more in flight", style="dim"))
    if last:
        rows = [_cells(p, r, r.objective, False) for r in last]
        lines += [Text(""), Text(f"last {len(last)} ended", style="bold")]
        lines += table_lines(_trial_columns(p, "objective"), rows, width)
    return lines


def fit_height(room: int, n_active: int, n_last: int) -> tuple[int, int]:
    """(trials in flight, ended trials) to show in `room` lines: the ended list shrinks first
    (down to one, then none), then the list of trials in flight (with a line saying how many are
    not shown)."""
    def need(a: int, e: int) -> int:
        return (2 + a + (a < n_active) if n_active else 0) + (3 + e if e else 0)

    a, e = n_active, n_last
    while need(a, e) > room and e > 1:
        e -= 1
    if need(a, e) > room:
        e = 0
    while need(a, e) > room and a > 0:
        a -= 1
    return a, e


def closing_lines(title: str, p: Progress, width: int) -> list[Text]:
    """What stays when the view goes: the summary, packed to `width` (an interrupted sweep's
    keeps its ETA and the trials not ended)."""
    ended = len(p.ended) == p.total
    first = Text(f"{title}: {len(p.ended)}/{p.total} ended in {fmt_duration(p.elapsed_s)}"
                 + ("" if ended else f", ETA {fmt_eta(p)}") + ":")
    counts = [Text(f"{state} {n}") for state, n in p.counts().items() if not ended or state in ENDED_STATES]
    return pack([first] + counts, width, sep="  ")
