"""Per-trial overhead of the two sweep executors against a plain training loop, in one process.

    python benchmarks/executor_overhead.py [--steps 40] [--eval-interval 5] [--repeats 2]

1. reference: `distill.run.train.run_training` called directly (no Ray);
2. `local` executor: a 1-trial sweep whose Tune function runs the same loop;
3. `ray_train` executor: a 1-trial sweep whose Tune function fits a TorchTrainer (Train V2).

Ray is started once before the timed sweeps, so its start-up is not charged to a
trial; each sweep's wall time includes trial scheduling, worker start-up, imports,
reporting and checkpoint hand-over. Prints seconds and ratios to the reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.run.train import run_training
from kdsweep.sweeps.runner import run_sweep
from kdsweep.sweeps.space import parse_space

PARAMS = {"lr": {"type": "choice", "values": [3e-3]}, "warmup_steps": {"type": "choice", "values": [0]},
          "temperature": {"type": "choice", "values": [2.0]}, "alpha": {"type": "choice", "values": [0.5]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-interval", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    train = {"max_steps": args.steps, "eval_interval": args.eval_interval, "batch_size": 8, "micro_batch_size": 8,
             "block_size": 256, "val_max_proteins": 48, "final_eval": False}
    work = Path(tempfile.mkdtemp(prefix="kdsweep-bench-"))

    def plain(i: int) -> float:
        cfg = TrainConfig().replace(scale="demo-xs", output_dir=str(work / f"plain{i}"), lr=3e-3, **train)
        t = time.perf_counter()
        run_training(cfg, log=lambda _: None)
        return time.perf_counter() - t

    def sweep(executor: str, i: int) -> float:
        # The teacher cache is off: its one-off build would be charged to the one trial here
        # (benchmarks/demo_cache_sweep.py measures it).
        space = parse_space({"name": f"{executor}{i}", "scales": ["demo-xs"], "arms": ["baseline"], "params": PARAMS,
                             "train": train, "search": {"trials_per_study": 1, "max_concurrent": 1,
                                                        "executor": executor},
                             "cache": {"enabled": False}}, "bench")
        t = time.perf_counter()
        run_sweep(space, storage=str(work / "sweeps"), log=lambda _: None)
        return time.perf_counter() - t

    plain(-1)  # warm the tokenized-data cache and imports
    import ray

    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    results = {name: [] for name in ("plain loop", "local executor", "ray_train executor")}
    for i in range(args.repeats):
        results["plain loop"].append(plain(i))
        results["local executor"].append(sweep("local", i))
        results["ray_train executor"].append(sweep("ray_train", i))
    ref = statistics.median(results["plain loop"])
    print(f"{args.steps} steps, eval every {args.eval_interval} ({args.steps // args.eval_interval} reports); "
          f"median of {args.repeats}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:<20} {med:7.1f} s   x{med / ref:4.2f}   (+{med - ref:5.1f} s)   runs: "
              + ", ".join(f"{t:.1f}" for t in times))


if __name__ == "__main__":
    main()
