"""The demo sweep with the live teacher and with the teacher cache: wall time, build time and size, best val_ppl.

    python benchmarks/demo_cache_sweep.py [--space search_spaces/demo.yaml] [--startup-trials N] [--smoke]

Runs `kdsweep sweep run SPACE` twice, one after the other, each as its own process with
its own embedded Ray and storage folder: first with `cache: {enabled: false}` (every
trial runs the live teacher), then with the space's cache on (built at the start and
included in that sweep's wall time; the build's own time, from the sweep's log, and the
cache's size are printed). `--startup-trials` (default: the space's trials per study)
makes every Optuna proposal random and seeded, so both sweeps try the same
configurations and trials pair up by parameters. ASHA's stop decisions depend on the
order in which concurrent trials report, so a pair may stop at different steps: pairs
are compared at the steps both reached. Prints per study the best val_ppl of each sweep
and, over all pairs, the largest relative val_ppl difference at a common step.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdsweep.distill.run.rundir import eval_rows  # noqa: E402
from kdsweep.distill.teacher.cache import cache_size_bytes  # noqa: E402
from kdsweep.sweeps.layout import SweepDir  # noqa: E402
from kdsweep.sweeps.status import sweep_status  # noqa: E402
from kdsweep.sweeps.study import ATTR_TRIAL, study_trials  # noqa: E402


def run_sweep(space: dict, name: str, store: Path) -> tuple[float, str]:
    path = store.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**space, "name": name}))
    ray_tmp = tempfile.mkdtemp(prefix="kdr", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "kdsweep", "sweep", "run", str(path), "--storage", str(store)],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if p.returncode:
        sys.exit(f"sweep {name} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return wall, p.stdout


def trials(sd: SweepDir) -> dict[tuple, list[dict]]:
    """{(study, params): eval rows} of every trial."""
    _, by_study = study_trials(sd)
    return {(study, tuple(sorted(t.params.items()))): eval_rows(sd.runs / t.user_attrs[ATTR_TRIAL])
            for study, ts in by_study.items() for t in ts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "demo.yaml"))
    ap.add_argument("--startup-trials", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="a tiny variant (8 steps, 1 scale) to try the script")
    args = ap.parse_args()
    space = yaml.safe_load(Path(args.space).read_text())
    search = space.setdefault("search", {})
    search["startup_trials"] = args.startup_trials or search.get("trials_per_study", 4)
    if args.smoke:
        space["scales"] = space["scales"][:1]
        space["train"].update(max_steps=8, eval_interval=4)
        search.update(grace_period=4)
    work = Path(tempfile.mkdtemp(prefix="kdsweep-demo-cache-"))
    store = work / "store"
    store.mkdir()
    live_wall, _ = run_sweep({**space, "cache": {"enabled": False}}, "live", store)
    cached_wall, log = run_sweep(space, "cached", store)
    built = re.search(r"teacher cache: built in ([\d.]+) s: (\S+)", log)
    size_line = next((line for line in log.splitlines() if line.startswith("teacher cache: ") and " × " in line), "")
    live_sd, cached_sd = SweepDir(store / "live"), SweepDir(store / "cached")
    print(f"space {args.space} (startup_trials {search['startup_trials']}); machine: {os.cpu_count()} CPUs")
    print(size_line)
    if built:
        print(f"cache build (a Ray task, inside the cached sweep): {float(built.group(1)):.1f} s, "
              f"{cache_size_bytes(built.group(2)) / 1e6:.1f} MB on disk")
    print(f"wall: live teacher {live_wall:.1f} s, cache {cached_wall:.1f} s (build included), "
          f"live / cache {live_wall / cached_wall:.2f}x")
    if built:
        rest = cached_wall - float(built.group(1))
        print(f"wall without the build: cache {rest:.1f} s, live / cache {live_wall / rest:.2f}x")
    print(f"{'study':<26}{'best val_ppl live':>20}{'best val_ppl cache':>20}{'rel diff':>12}")
    for a, b in zip(sweep_status(live_sd), sweep_status(cached_sd)):
        la, lb = a["best_val_ppl"], b["best_val_ppl"]
        diff = f"{abs(lb / la - 1):.2e}" if la and lb else "-"
        same = "same trial params" if a["best_params"] == b["best_params"] else "different best trial"
        print(f"{a['study']:<26}{la or float('nan'):>20.6f}{lb or float('nan'):>20.6f}{diff:>12}   {same}")
    live_trials, cached_trials = trials(live_sd), trials(cached_sd)
    worst, pairs, steps = 0.0, 0, 0
    for key, rows in cached_trials.items():
        other = {r["step"]: r["val_ppl"] for r in live_trials.get(key, [])}
        common = [(r["val_ppl"], other[r["step"]]) for r in rows if r["step"] in other]
        pairs += bool(common)
        steps += len(common)
        worst = max([worst, *(abs(c / l - 1) for c, l in common)])
    print(f"paired trials: {pairs} of {len(cached_trials)}; {steps} common evaluations; "
          f"largest relative val_ppl difference {worst:.2e}")
    print(f"sweep folders: {store}")


if __name__ == "__main__":
    main()
