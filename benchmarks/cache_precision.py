"""What the teacher cache's storage dtype does to a run: fp32 / bf16 / fp16 caches against the live teacher.

    python benchmarks/cache_precision.py [--proteins 3000] [--steps 40]

One `demo-s` run (the demo space's training settings: 40 steps of 8 × 256 tokens, fp32,
arm `both`: uncertainty weighting reads the cached entropies, smoothing 0.1) against the
trained demo teacher, on the first `--proteins` bundled proteins (hash split, so the
val/test part of each cache stays small), four times: live teacher, then a cache stored in
fp32, bf16 and fp16. Prints, per cache dtype, its size and the largest relative
difference to the live run of the train loss (every logged step), the val ppl (every
evaluation) and the final val/test metrics that involve the teacher (ppl_teacher,
ppl_ratio, kl_teacher), plus the student's own test ppl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdsweep.distill.config import TrainConfig  # noqa: E402
from kdsweep.distill.data.batches import write_bundled_subset  # noqa: E402
from kdsweep.distill.run.rundir import eval_rows, read_log  # noqa: E402
from kdsweep.distill.run.train import run_training  # noqa: E402
from kdsweep.distill.teacher.cache import build_teacher_cache, cache_size_bytes, plan_teacher_cache  # noqa: E402

FINAL = ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher")


def final_metrics(run_dir: Path) -> dict:
    return {r["event"]: r for r in read_log(run_dir) if r.get("event") in ("val", "test")}


def rel(a: float, b: float) -> float:
    return abs(b / a - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proteins", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kdsweep-cache-precision-"))
    cfg = TrainConfig(data=str(write_bundled_subset(work / "proteins.fasta", args.proteins)), split_method="hash",
                      scale="demo-s", max_steps=args.steps, eval_interval=5, batch_size=8, micro_batch_size=8,
                      block_size=256, val_max_proteins=48, eval_batch_size=16, precision="fp32", lr=3e-3,
                      temperature=2.0, alpha=0.5, uncertainty=True, smoothing=0.1, gen_min_residues=200,
                      gen_max_new_tokens=64)
    live = work / "live"
    run_training(cfg.replace(output_dir=str(live)), log=lambda _: None)
    live_rows, live_final = eval_rows(live), final_metrics(live)
    print(f"demo teacher -> demo-s, {args.steps} steps, arm both, fp32 compute; {args.proteins} proteins (hash split)")
    print(f"live: final val_ppl {live_rows[-1]['val_ppl']:.6f}, test ppl_teacher "
          f"{live_final['test']['ppl_teacher']:.6f}, test kl_teacher {live_final['test']['kl_teacher']:.6f}")
    for dtype in ("fp32", "bf16", "fp16"):
        path = build_teacher_cache(plan_teacher_cache(cfg, dtype, work / "caches"), progress=False,
                                   log=lambda _: None)
        out = work / dtype
        run_training(cfg.replace(output_dir=str(out), teacher_cache=str(path)), log=lambda _: None)
        rows, final = eval_rows(out), final_metrics(out)
        loss = max(rel(a["train_loss"], b["train_loss"]) for a, b in zip(live_rows, rows, strict=True))
        val = max(rel(a["val_ppl"], b["val_ppl"]) for a, b in zip(live_rows, rows, strict=True))
        metrics = ", ".join(f"{split} {k} {rel(live_final[split][k], final[split][k]):.1e}"
                            for split in ("val", "test") for k in FINAL)
        print(f"{dtype}: cache {cache_size_bytes(path) / 1e6:.1f} MB; max relative difference to live: "
              f"train_loss {loss:.1e}, val_ppl {val:.1e}; {metrics}")
    print(f"runs: {work}")


if __name__ == "__main__":
    main()
