"""How a running sweep is shown: one in-place view in a terminal, short lines everywhere else.

* `LiveRenderer` (a terminal): one `rich` view redrawn in place: a header with elapsed
  time, ETA, trials per state and progress per study; the running and waiting trials;
  the last few that ended. It is removed at the end, leaving one summary line (the
  final status table follows it).
* `LineRenderer` (CI, `nohup`, a log file, a pipe, `TERM=dumb`): one line per trial
  that ends, and a summary line every `summary_every_s` and at the end.

`NO_COLOR` is honoured by `rich` itself.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sweeps.progress import (
    Progress,
    TrialRow,
    ended_line,
    fmt_duration,
    fmt_number,
    fmt_params,
    fmt_step,
    summary_line,
)
from sweeps.study import COMPLETED, DIVERGED, FAILED, RUNNING, STOPPED_EARLY

LAST_ENDED = 5  # ended trials the terminal view keeps on screen
STATE_STYLE = {COMPLETED: "green", STOPPED_EARLY: "yellow", DIVERGED: "red", FAILED: "bold red", RUNNING: "cyan"}


def is_interactive(out: TextIO) -> bool:
    """A terminal that can redraw in place: a TTY whose TERM is not dumb."""
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


class LineRenderer:
    def __init__(self, out: TextIO, summary_every_s: float = 300.0):
        self.out, self.every = out, summary_every_s
        self._last_summary = time.monotonic()

    def _write(self, line: str) -> None:
        self.out.write(f"{_stamp()}  {line}\n")
        self.out.flush()

    def update(self, p: Progress, ended: TrialRow | None = None) -> None:
        if ended is not None:
            self._write(ended_line(p, ended))
        if time.monotonic() - self._last_summary >= self.every:
            self._last_summary = time.monotonic()
            self._write(summary_line(p))

    def close(self, p: Progress) -> None:
        self._write(summary_line(p))


class LiveRenderer:
    def __init__(self, out: TextIO, title: str):
        self.title = title
        self.console = Console(file=out)
        # Redrawn by the callback on Tune's own loop (auto_refresh off): no thread reads the trials.
        self.live = Live(console=self.console, auto_refresh=False, transient=True, vertical_overflow="ellipsis")
        self.live.start()
        # A sweep that dies with an exception never reaches `close`: give the terminal its cursor back.
        atexit.register(self.live.stop)

    def update(self, p: Progress, ended: TrialRow | None = None) -> None:
        self.live.update(self.frame(p), refresh=True)

    def close(self, p: Progress) -> None:
        self.live.stop()
        atexit.unregister(self.live.stop)
        self.console.print(f"{self.title}: {summary_line(p)}", highlight=False, soft_wrap=True)

    def frame(self, p: Progress) -> Group:
        eta = p.eta_s()
        header = Text.assemble(
            (self.title, "bold"),
            f"   elapsed {fmt_duration(p.elapsed_s)}   ETA {'~' + fmt_duration(eta) if eta is not None else '-'}"
            f"   {len(p.ended)}/{p.total} ended")
        counts = Text("   ").join(Text(f"{state} {n}", style=STATE_STYLE.get(state, ""))
                                  for state, n in p.counts().items())
        studies = Text("  ".join(f"{study} {done}/{budget}" for study, done, budget in p.per_study()), style="dim")
        parts = [header, counts, studies]
        active = p.running + p.started_pending
        if active:
            parts += [Text(""), _table(["trial", "study", "state", "step", "val_ppl", "best", "time", "params"], [
                [r.trial_id, r.study, r.state, fmt_step(r, p.max_steps), fmt_number(r.val_ppl),
                 fmt_number(r.best_val_ppl), fmt_duration(r.seconds), fmt_params(r.params)] for r in active])]
        last = p.last_ended(LAST_ENDED)
        if last:
            parts += [Text(""), Text(f"last {len(last)} ended", style="bold"),
                      _table(["trial", "study", "state", "step", "best", "time"], [
                          [r.trial_id, r.study, r.state, fmt_step(r, p.max_steps), fmt_number(r.best_val_ppl),
                           fmt_duration(r.seconds)] for r in reversed(last)])]
        return Group(*parts)


def _table(columns: list[str], rows: list[list[str]]) -> Table:
    """Plain cells (never read as rich markup); the state column coloured by state."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    state = columns.index("state")
    for row in rows:
        table.add_row(*(Text(cell, style=STATE_STYLE.get(cell, "") if i == state else "") for i, cell in enumerate(row)))
    return table
