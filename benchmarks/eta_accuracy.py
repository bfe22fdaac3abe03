"""How good the live view's ETA is: a real sweep, every ETA it showed against the time really left.

    python benchmarks/eta_accuracy.py [--space demo] [--storage DIR] [--record FILE]
    python benchmarks/eta_accuracy.py --replay FILE

Runs the space's sweep in this process (its teacher cache is built first if absent, outside
the timed part: the view starts with the trials) and records every state the live view drew
(`sweeps.progress.Progress`, one JSON line per redraw, about one a second) to FILE. The sweep
ends when its last trial ends; for every recorded moment t with an ETA, the error is

    (ETA(t) - (end - t)) / (end - t)

and the table gives, per tenth of the sweep's wall time from the quarter mark on, the largest
error and the median, and the same from the moment a quarter of the trials had ended.
`--replay` recomputes the table from a recording with the ETA code of this checkout (to try
another estimate on the same sweep without running it again).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from kdsweep.sweeps.progress import Progress


def load(path: Path) -> list[Progress]:
    return [Progress.from_dict(json.loads(line)) for line in path.read_text().splitlines()]


def errors(snapshots: list[Progress]) -> list[tuple[float, float, float]]:
    """(fraction of the wall time, fraction of trials ended, relative ETA error) per moment with an ETA."""
    end = snapshots[-1].elapsed_s
    out = []
    for p in snapshots:
        left = end - p.elapsed_s
        eta = p.eta_s()
        if eta is not None and left > 0:
            out.append((p.elapsed_s / end, len(p.ended) / p.total, (eta - left) / left))
    return out


def table(snapshots: list[Progress]) -> str:
    errs = errors(snapshots)
    end = snapshots[-1].elapsed_s
    lines = [f"sweep wall time (Tune started -> last trial ended): {end:.0f} s, {snapshots[-1].total} trials, "
             f"{len(snapshots)} redraws",
             "| from | to | moments | largest error | median error |", "|---|---|---|---|---|"]
    for lo in [0.25] + [k / 10 for k in range(3, 10)]:
        hi = 0.3 if lo == 0.25 else lo + 0.1
        sel = [e for f, _, e in errs if lo <= f < hi]
        if sel:
            worst = max(sel, key=abs)
            lines.append(f"| {lo:.0%} | {hi:.0%} of the wall time | {len(sel)} | {worst:+.0%} | "
                         f"{statistics.median(sel):+.0%} |")
    for lo, hi, key, label in ((0.25, 0.8, 0, "wall time"), (0.25, 0.9, 0, "wall time"), (0.25, 0.9, 1, "trials ended")):
        sel = [row[2] for row in errs if lo <= row[key] < hi]
        lines.append(f"{lo:.0%} to {hi:.0%} of the {label}: largest |error| {max(map(abs, sel)):.0%}, median "
                     f"{statistics.median(map(abs, sel)):.0%}, {sum(abs(e) <= 0.30 for e in sel) / len(sel):.0%} of "
                     "moments within 30 %")
    # the last tenth: the time left tends to 0, so a relative error says little; the error in seconds
    tail = [(p.eta_s() - (end - p.elapsed_s)) for p in snapshots if p.elapsed_s >= 0.9 * end and p.eta_s() is not None]
    lines.append(f"last 10 % of the wall time ({0.1 * end:.0f} s): error at most {max(map(abs, tail)):.0f} s")
    return "\n".join(lines)


def record_sweep(space_arg: str, storage: str, record: Path) -> None:
    from kdsweep.sweeps import live as sweeps_live
    from kdsweep.sweeps.cache import ensure_teacher_cache
    from kdsweep.sweeps.layout import storage_root
    from kdsweep.sweeps.runner import run_sweep, start_ray
    from kdsweep.sweeps.space import load_space

    space = load_space(space_arg)
    # the teacher cache first, untimed: the ETA is about the trials
    start_ray(space, None, None, print)
    ensure_teacher_cache(space, storage_root(storage), print)
    record.write_text("")
    drawn = sweeps_live.LiveView.progress

    def progress(self, trials):
        p = drawn(self, trials)
        with open(record, "a") as fh:
            fh.write(json.dumps(asdict(p)) + "\n")
        return p

    sweeps_live.LiveView.progress = progress
    load = os.getloadavg()[0]
    run_sweep(space, name=f"{space.name}-eta", storage=storage)
    print(f"load average (1 min) at the start {load:.1f}, at the end {os.getloadavg()[0]:.1f}, on "
          f"{os.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="demo")
    ap.add_argument("--storage", help="where the sweep goes (default: a temporary folder)")
    ap.add_argument("--record", type=Path, default=Path("eta-record.jsonl"), help="the recording written")
    ap.add_argument("--replay", type=Path, help="a recording to read instead of running a sweep")
    args = ap.parse_args()
    if args.replay is None:
        record_sweep(args.space, args.storage or tempfile.mkdtemp(prefix="kdsweep-eta-"), args.record)
    print(table(load(args.replay or args.record)))


if __name__ == "__main__":
    main()
