"""Per-trial and per-sweep fixed costs of a sweep, split by timing a 1-trial and an N-trial sweep.

    python benchmarks/trial_overhead.py [--trials 4] [--steps 8] [--eval-interval 1] [--batch-size 2]
        [--configs local,local-no-reuse,ray_train,ray_train-poll-2s]
    PYTHONPATH=/path/to/another/checkout python benchmarks/trial_overhead.py --configs local,ray_train
        # the same measurement of another version of kdsweep (e.g. before a change)

Every trial is the same (the demo teacher, the demo-xs student, `--steps` steps of `--batch-size`
x 256 tokens, a report and a checkpoint every `--eval-interval` steps, each report scoring 8 val
proteins, the teacher cache off, one trial at a time): small, so that what a trial costs besides
its work stands out on a shared machine. So
with W_1 and W_N the walls of a 1-trial and an N-trial sweep, each started from scratch (Ray
included):

    per-trial cost  c = (W_N - W_1) / (N - 1)      per-sweep cost  S = W_1 - c

The trial's own work is what `run_training` takes called directly in this process (`plain`,
no Ray: its steps, evaluations, checkpoints, and its set-up of data and models); c - plain is
what the sweep machinery adds to a trial. The per-trial fixed cost is c minus the steps and
evaluations alone: the plain run's wall less its set-up (the time to its first step, less one
steady step), where the running kdsweep reports those (`first_step_s`, `steady_tokens_per_s`).

Configurations (each a fresh embedded Ray):
  local              the default for one-worker trials (this version's settings)
  local-no-reuse     the same, each trial in a new process (Tune's reuse_actors off)
  ray_train          a Ray Train V2 TorchTrainer per trial
  ray_train-poll-2s  the same with Train's health-check poll at Ray's default 2 s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import ray
import torch

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.run.train import run_training
from kdsweep.sweeps import runner as sweeps_runner
from kdsweep.sweeps.runner import run_sweep
from kdsweep.sweeps.space import parse_space

PARAMS = {"lr": {"type": "choice", "values": [3e-3]}, "warmup_steps": {"type": "choice", "values": [0]},
          "temperature": {"type": "choice", "values": [2.0]}, "alpha": {"type": "choice", "values": [0.5]}}
HEALTH = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextlib.contextmanager
def setting(config: str):
    """The executor of `config`, with its change to this version's settings undone afterwards."""
    executor = config.split("-")[0]
    saved_env, saved_reuse = os.environ.get(HEALTH), getattr(sweeps_runner, "reuses_processes", None)
    if config == "ray_train-poll-2s":
        os.environ[HEALTH] = "2.0"
    if config == "local-no-reuse":
        sweeps_runner.reuses_processes = lambda space: False
    try:
        yield executor
    finally:
        if saved_env is None:
            os.environ.pop(HEALTH, None)
        else:
            os.environ[HEALTH] = saved_env
        if saved_reuse is not None:
            sweeps_runner.reuses_processes = saved_reuse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--eval-interval", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--configs", default="local,local-no-reuse,ray_train,ray_train-poll-2s")
    args = ap.parse_args()
    train = {"max_steps": args.steps, "eval_interval": args.eval_interval, "batch_size": args.batch_size,
             "micro_batch_size": args.batch_size, "block_size": 256, "val_max_proteins": 8, "eval_batch_size": 8,
             "final_eval": False}
    work = Path(tempfile.mkdtemp(prefix="kdsweep-overhead-"))
    print(f"kdsweep from {Path(sweeps_runner.__file__).parent.parent}; load average at start: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    def plain(i: int) -> tuple[float, dict]:
        cfg = TrainConfig().replace(scale="demo-xs", output_dir=str(work / f"plain{i}"), lr=3e-3, **train)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a trial's (cpus_per_worker 1, sweeps.trial)
        t = time.perf_counter()
        run_training(cfg, log=lambda _: None)
        wall = time.perf_counter() - t
        torch.set_num_threads(threads)
        rows = [json.loads(line) for line in (work / f"plain{i}" / "metrics.jsonl").read_text().splitlines()]
        return wall, [r for r in rows if "val_ppl" in r and "event" not in r][-1]

    def sweep(config: str, n: int) -> float:
        with setting(config) as executor:
            name = f"{config}-{n}-{time.time_ns()}".replace("_", "-")
            space = parse_space({"name": name, "scales": ["demo-xs"], "arms": ["baseline"], "params": PARAMS,
                                 "train": train, "search": {"trials_per_study": n, "max_concurrent": 1,
                                                            "executor": executor, "early_stopping": False},
                                 "cache": {"enabled": False}}, "bench")
            t = time.perf_counter()
            run_sweep(space, storage=str(work / "sweeps"), log=lambda _: None)
            wall = time.perf_counter() - t
            ray.shutdown()  # the next sweep starts its own Ray: its start is a per-sweep cost
            return wall

    plain(-1)  # warm the tokenized-data cache, the imports and the page cache
    sweep("local", 1)  # and the driver's own first-sweep imports (Tune, Optuna), which no config should pay
    plain_wall, row = plain(0)
    setup = None
    if "first_step_s" in row:  # this version reports them (distill.run.train.RunCosts)
        step_s = train["batch_size"] * train["block_size"] / row["steady_tokens_per_s"]
        setup = row["first_step_s"] - step_s
    print(f"plain run_training: {plain_wall:.1f} s" + (f" (set-up {setup:.1f} s before its first step)" if setup else ""))
    print(f"{args.trials}-trial vs 1-trial sweeps, {args.steps} steps, a report every {args.eval_interval}")
    print(f"{'config':<20}{'W_1':>8}{'W_N':>8}{'per trial c':>13}{'c - plain':>11}{'fixed/trial':>13}{'per sweep S':>13}")
    for config in args.configs.split(","):
        w1, wn = sweep(config, 1), sweep(config, args.trials)
        c = (wn - w1) / (args.trials - 1)
        fixed = f"{c - (plain_wall - setup):.1f} s" if setup is not None else "-"
        print(f"{config:<20}{w1:>7.1f}s{wn:>7.1f}s{c:>11.1f} s{c - plain_wall:>9.1f} s{fixed:>13}{w1 - c:>11.1f} s",
              flush=True)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
