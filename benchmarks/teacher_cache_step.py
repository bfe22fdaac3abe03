"""Tokens/s of one training step with the live teacher against the teacher cache, at a ProtGPT2-shaped CPU scale.

    python benchmarks/teacher_cache_step.py [--student micro] [--layers 6] [--width 512] [--block 256] [--batch 4]
                                            [--repeats 3] [--proteins 3000]

Teacher: a GPT-2 with ProtGPT2's config (vocabulary 50,257, 1024 positions, its
tokenizer) resized to `--layers` × `--width` (36 × 1280 is ProtGPT2's own shape), random
init, saved with `save_pretrained`; student: a scale of distill/assets/scales.yaml
(`--student`, default `micro`: 4 layers × 256). Data: the first `--proteins` bundled
proteins, hash split, ProtGPT2's BPE. One fp32 cache of the pool is built first
(benchmarks/bench_cache.py; its time and size are printed). Then `distill.run.step.Stepper` (the
training loop's own step: fused loss, AdamW, clipping) runs on the same blocks with a
`LiveTeacher` and a `CachedTeacher`, alternating live / cache each repeat so both see the same machine
load, for the `baseline` arm and the `both` arm (uncertainty weighting: the live
teacher's entropy needs an extra head pass, the cache stores it). Prints the median
wall and CPU (process) seconds per step, tokens/s and the live / cache ratios.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from benchmarks.bench_cache import build_bench_cache  # noqa: E402
from kdsweep.distill.loss.kd import KDOptions  # noqa: E402
from kdsweep.distill.models import build_student, load_teacher, save_protgpt2_shaped, student_sizes  # noqa: E402
from kdsweep.distill.run.step import LossSettings, Stepper  # noqa: E402
from kdsweep.distill.teacher.source import LiveTeacher  # noqa: E402
from kdsweep.sweeps.space import ARMS as SPACE_ARMS  # noqa: E402

ARMS = {arm: SPACE_ARMS[arm].loss_flags(0.1) for arm in ("baseline", "both")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="micro", help="student scale (micro, tiny, small, medium)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--proteins", type=int, default=3000, help="bundled proteins read (the cache holds their val/test)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kdsweep-cache-step-"))
    teacher_dir = save_protgpt2_shaped(work / "teacher", n_layer=args.layers, n_head=max(1, args.width // 64),
                                       n_embd=args.width)
    steps = args.repeats + 1  # one warm-up step, then the timed ones; one block each per step
    cache = build_bench_cache(teacher_dir, work, proteins=args.proteins, block=args.block,
                              blocks=steps * args.batch, precision="fp32", device="cpu")
    plan, rt = cache.plan, cache.plan.runtime
    live = LiveTeacher(load_teacher(plan.teacher_name), plan.teacher_name)
    tokens = args.batch * args.block
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; teacher {args.layers} x {args.width}, "
          f"V = {plan.teacher_config.vocab_size}, {live.n_params / 1e6:.1f} M params; student {args.student}; "
          f"step = {args.batch} x {args.block} = {tokens} tokens, fp32")
    print(cache.describe())

    for arm, loss_options in ARMS.items():
        loss = LossSettings(KDOptions(temperature=2.0, alpha=0.5, weight_norm="mask", **loss_options), impl="fused")
        times = {"live": [], "cache": []}
        steppers = {}
        for name, teacher in (("live", live), ("cache", cache.teacher)):
            student = build_student(plan.teacher_config, student_sizes(args.student, None, None, None), seed=0)
            steppers[name] = Stepper(student, teacher, rt, loss, lr=1e-3, total_steps=100)
        for step in range(steps):
            blocks = torch.arange(step * args.batch, (step + 1) * args.batch)
            x = cache.train_blocks[blocks]
            for name in ("live", "cache") if step % 2 == 0 else ("cache", "live"):
                t0, c0 = time.perf_counter(), time.process_time()
                steppers[name].step(blocks, x)
                if step:  # the first step warms up
                    times[name].append((time.perf_counter() - t0, time.process_time() - c0))
        med = {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
               for name, ts in times.items()}
        for name, (wall, cpu) in med.items():
            print(f"{arm:<8} {name:<5}  wall {wall:6.2f} s/step  CPU {cpu:6.2f} s/step  "
                  f"{tokens / wall:7.0f} tok/s (wall)  {tokens / cpu:7.0f} tok/s (CPU)   wall runs: "
                  + ", ".join(f"{w:.2f}" for w, _ in times[name]))
        print(f"{arm:<8} live / cache: wall {med['live'][0] / med['cache'][0]:.2f}x, "
              f"CPU {med['live'][1] / med['cache'][1]:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
