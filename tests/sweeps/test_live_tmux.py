"""The live view in a real terminal: tmux panes of 80, 120 and 200 columns, read with `capture-pane`.

One real sweep runs once (a module fixture) in a 120-column pane, its driver recording every state
the view drew; the recording is then replayed through the same renderer in 80- and 200-column
panes, followed by the status table and next steps of that sweep at their width. In both, a
line is logged through Ray's own log handler while the view is up (what left stale copies of
the view behind). Checked at every width: at most one view on screen at any moment and none
left in the scrollback (the view gives way to its summary), the study (scale/arm) and the
state of every trial row whole, no line wider than the pane.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from kdsweep.sweeps.progress import Progress
from tests.fixtures import ray_subprocess_env, write_small_space

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(shutil.which("tmux") is None,
                                 reason="needs tmux: run as root `bash scripts/setup.sh --tests` (or apt-get install tmux)")]

HEIGHT = 40
FRAME_HEAD = re.compile(r"^(sweep|replicates of) \S+ +elapsed \S+ +ETA ")
STUDY = r"demo-xs/(baseline|both)"
STATES = r"(starting|running|completed|stopped_early|diverged|failed)"
RAY_LINE = "KDSWEEP-TEST a line from Ray"  # short: Ray's handler adds a time stamp and a place
EXIT = "KDSWEEP-EXIT="

DRIVER = textwrap.dedent('''
    """Run `kdsweep ARGS` (argv[2:]) recording every state the live view draws to argv[1]; log one line
    through Ray's own handler while the view is up."""
    import json, logging, sys
    from dataclasses import asdict
    import ray  # noqa: F401  (Ray's log handler, made before the view, as in a sweep)
    from kdsweep.sweeps import console as sweeps_console
    from kdsweep.cli import main

    drawn = sweeps_console.LiveRenderer.update
    count = [0]

    def update(self, p, ended=None):
        with open(sys.argv[1], "a") as fh:
            fh.write(json.dumps(asdict(p)) + "\\n")
        count[0] += 1
        if count[0] == 3:
            logging.getLogger("ray.tune.kdsweep_test").warning("%s")
        drawn(self, p, ended)

    sweeps_console.LiveRenderer.update = update
    sys.exit(main(sys.argv[2:]))
''' % RAY_LINE)

REPLAY = textwrap.dedent('''
    """Replay a recording (argv[1]) through the live renderer, then print the status table and next steps
    of the sweep argv[2] in storage argv[3], all at this terminal's width."""
    import json, logging, sys, time
    import ray  # noqa: F401
    from kdsweep.sweeps.console import LiveRenderer
    from kdsweep.sweeps.layout import open_sweep
    from kdsweep.sweeps.progress import Progress
    from kdsweep.sweeps.runner import next_steps
    from kdsweep.sweeps.status import format_status, sweep_status
    from kdsweep.sweeps.textfit import output_width

    states = [Progress.from_dict(json.loads(line)) for line in open(sys.argv[1])]
    renderer = LiveRenderer(sys.stdout, "sweep " + sys.argv[2])
    for i, p in enumerate(states):
        renderer.update(p)
        if i == 2:
            logging.getLogger("ray.tune.kdsweep_test").warning("%s")
        time.sleep(max(0.03, 3.0 / len(states)))  # on screen for 3 s in all: the pane is read every 0.5 s
    renderer.close(states[-1])
    sd = open_sweep(sys.argv[2], sys.argv[3])
    print(format_status(sweep_status(sd), output_width()))
    print(next_steps(sd, sys.argv[3], output_width()))
''' % RAY_LINE)


class Pane:
    """A command in a detached tmux session of a given size, on a tmux server of its own."""

    def __init__(self, socket: str, name: str, width: int, command: list[str], env: dict):
        self.tmux = ["tmux", "-L", socket]
        self.name, self.width = name, width
        shell = " ".join(f"'{a}'" for a in command) + f"; echo {EXIT}$?; sleep 3600"
        exports = " ".join(f"{k}='{v}'" for k, v in env.items() if k.startswith(("RAY_", "PYTHON", "KDSWEEP", "TUNE_")))
        subprocess.run([*self.tmux, "new-session", "-d", "-s", name, "-x", str(width), "-y", str(HEIGHT),
                        f"env {exports} TERM=xterm-256color {shell}"], check=True)
        subprocess.run([*self.tmux, "set-option", "-t", name, "history-limit", "20000"], check=True)

    def capture(self, history: bool = False, joined: bool = False) -> list[str]:
        args = ["-S", "-", "-E", "-"] if history else []
        out = subprocess.run([*self.tmux, "capture-pane", "-p", *(["-J"] if joined else []), "-t", self.name, *args],
                             capture_output=True, text=True, check=True).stdout
        return out.rstrip("\n").splitlines()

    def watch(self, timeout: float) -> list[list[str]]:
        """Screens captured about every half second until the command has exited."""
        screens, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            screens.append(self.capture(joined=True))  # a line wider than the pane stays one line
            if any(line.startswith(EXIT) for line in screens[-1]):
                return screens
            time.sleep(0.5)
        raise AssertionError(f"{self.name}: no exit within {timeout} s:\n" + "\n".join(self.capture(history=True)))


@pytest.fixture(scope="module")
def panes(tmp_path_factory, small_fasta, char_teacher):
    """{width: (screens while it ran, the whole scrollback joined, the recording)} for 120 (the real sweep),
    80 and 200 (its replays)."""
    tmp = tmp_path_factory.mktemp("tmux")
    space = write_small_space(tmp, "watched", small_fasta, char_teacher, train={"max_steps": 16},
                              search={"trials_per_study": 3, "grace_period": 4})
    store, record = tmp / "store", tmp / "record.jsonl"
    (tmp / "driver.py").write_text(DRIVER)
    (tmp / "replay.py").write_text(REPLAY)
    socket = f"kdsweep-{uuid.uuid4().hex[:8]}"
    out = {}
    try:
        with ray_subprocess_env() as env:
            real = Pane(socket, "w120", 120, [sys.executable, str(tmp / "driver.py"), str(record), "sweep", "run",
                                              str(space), "--storage", str(store)], env)
            out[120] = (real.watch(900), real.capture(history=True, joined=True), record)
        for width in (80, 200):
            pane = Pane(socket, f"w{width}", width, [sys.executable, str(tmp / "replay.py"), str(record), "watched",
                                                     str(store)], env)
            out[width] = (pane.watch(300), pane.capture(history=True, joined=True), record)
        yield out
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


@pytest.mark.parametrize("width", [80, 120, 200])
def test_one_view_on_screen_and_none_left_behind(panes, width):
    screens, history, _ = panes[width]
    assert f"{EXIT}0" in history, "\n".join(history)
    assert max(sum(bool(FRAME_HEAD.match(line)) for line in screen) for screen in screens) == 1  # it was seen
    for screen in screens:
        assert sum(bool(FRAME_HEAD.match(line)) for line in screen) <= 1, "\n".join(screen)
    assert not [line for line in history if FRAME_HEAD.match(line)], "\n".join(history)  # no stale copy
    assert sum(line.startswith("sweep watched: 6/6 ended in") for line in history) == 1, "\n".join(history)
    assert sum(RAY_LINE in line for line in history) == 1  # Ray's line, once, above the view


@pytest.mark.parametrize("width", [80, 120, 200])
def test_study_and_state_whole_and_every_line_fits(panes, width):
    screens, history, _ = panes[width]
    rows = 0
    for screen in screens:
        heads = [i for i, line in enumerate(screen) if FRAME_HEAD.match(line)]
        for line in screen[heads[0]:] if heads else []:  # the view: from its first line down
            assert len(line) <= width, "\n".join(screen)
            if re.match(r"\S+ +demo-xs/", line):  # a trial row
                rows += 1
                assert re.search(rf"(^| ){STUDY} +{STATES}( |$)", line), line
    assert rows > 0
    # what stays (the summary, the status table, the next steps' comments) fits; a command or a path is
    # kept whole, to be copied
    end = next(i for i, line in enumerate(history) if line.startswith("sweep watched: 6/6 ended in"))
    for line in history[end:]:
        if not (line.startswith(("results: ", EXIT)) or re.match(r"  \S*kdsweep ", line)):  # a command: bare or a path
            assert len(line) <= width, line
    status = "\n".join(history)
    assert "demo-xs/baseline" in status and "demo-xs/both" in status and "best objective" in status


def test_the_real_sweep_and_its_recording_agree(panes):
    """The 120-column pane ran the real sweep: its summary counts what the recording's last state holds."""
    _, history, record = panes[120]
    text = "\n".join(history)
    assert "teacher cache:" in text and "sweep watched: 2 studies x 3 trials" in text
    end = next(i for i, line in enumerate(history) if line.startswith("sweep watched: 6/6 ended in"))
    summary = " ".join([history[end]] + [line for line in history[end + 1:end + 3] if line.startswith("  ")])
    counts = {k: int(v) for k, v in re.findall(r"(stopped_early|completed|diverged|failed) (\d+)", summary)}
    last = Progress.from_dict(json.loads(Path(record).read_text().splitlines()[-1]))
    assert counts == {k: v for k, v in last.counts().items() if k in counts} and sum(counts.values()) == 6, summary
