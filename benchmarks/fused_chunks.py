"""The fused loss's chunk size on this machine: time per token and ops per call, by chunk rows.

Run from the repository root:

    python benchmarks/fused_chunks.py                            # ProtGPT2's head shapes, micro student
    python benchmarks/fused_chunks.py --rows 83,256,511,1022 --arm baseline

One ``fused_kd_loss`` forward + backward (gradients wrt the student's hidden states and
head) from random hidden states at ProtGPT2's vocabulary (V = 50,257) and teacher width
(1,280), a student of ``--student-width`` (micro: 256), B * L = ``--batch`` x ``--length``
positions, fp32, for each ``--rows`` (chunk rows; at L = 512 a multiple of 511 holds whole
sequences, which is what lets the uncertainty arms make their entropies in the same walk).
For each chunk size and each ``--blocks`` (rows of the elementwise math at a time, within
a chunk): median wall and CPU seconds over ``--repeats`` calls after one warm-up,
microseconds per token, the head matmuls' FLOP rate per CPU second (matmul FLOPs / CPU
time: on a shared machine it moves less than wall time), and with ``--ops`` the number of
ATen ops one call runs (``torch.profiler``, CPU; the proxy for kernel launches on a GPU,
where each is one). glibc's mmap threshold is fixed at 32 MiB first, as a
long-running training process ends up with it (benchmarks/memory.py): chunk temporaries
above it are page-faulted in afresh at every allocation, which is what small chunks avoid.

The measured best is what ``distill.loss.fused.CPU_CHUNK_ELEMENTS`` records; see
docs/benchmarks.md, "fused loss chunk size".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import allocator_for  # noqa: E402
from kdsweep.distill.loss.fused import fused_kd_loss  # noqa: E402
from kdsweep.distill.loss.reference import ARMS  # noqa: E402

PROTGPT2_VOCAB, PROTGPT2_WIDTH = 50_257, 1280


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="83,511,1022,2044", help="chunk rows to measure, comma-separated")
    ap.add_argument("--blocks", default="64,128,0",
                    help="rows of the elementwise math at a time (block_rows), comma-separated; 0 = the whole chunk")
    ap.add_argument("--ops", action="store_true", help="also count the ATen ops of one call (one more call each)")
    ap.add_argument("--vocab", type=int, default=PROTGPT2_VOCAB)
    ap.add_argument("--teacher-width", type=int, default=PROTGPT2_WIDTH)
    ap.add_argument("--student-width", type=int, default=256, help="micro 256, tiny 512, small 768, medium 1024")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--arm", choices=list(ARMS), default="both")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per chunk size (after one warm-up)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    return ap.parse_args(argv)


def inputs(args) -> tuple[torch.Tensor, ...]:
    """Hidden states and heads whose logits spread like a trained model's (std ~2 and ~3)."""
    gen = torch.Generator().manual_seed(0)
    b, n, v, ds, dt = args.batch, args.length, args.vocab, args.student_width, args.teacher_width
    student_hidden = torch.randn(b, n, ds, generator=gen)
    student_head = 2.0 / ds**0.5 * torch.randn(v, ds, generator=gen)
    teacher_hidden = torch.randn(b, n, dt, generator=gen)
    teacher_head = 3.0 / dt**0.5 * torch.randn(v, dt, generator=gen)
    labels = torch.randint(0, v, (b, n), generator=gen)
    return student_hidden, student_head, teacher_hidden, teacher_head, labels


def one_call(batch, rows: int, block: int, arm: str) -> None:
    uncertainty, smoothing = ARMS[arm]
    hidden = batch[0].clone().requires_grad_(True)
    head = batch[1].clone().requires_grad_(True)
    fused_kd_loss(hidden, head, *batch[2:], temperature=2.0, alpha=0.5, uncertainty=uncertainty,
                  smoothing=smoothing, chunk_rows=rows, block_rows=block or rows).backward()


def op_count(fn) -> int:
    """ATen ops one call of ``fn`` runs (every op the profiler records, nested ones included)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def head_flops(args, teacher_passes: int) -> float:
    """Matmul FLOPs of one call: teacher logits per pass, student logits and its two gradients."""
    tokens = args.batch * (args.length - 1)
    return tokens * args.vocab * (2 * teacher_passes * args.teacher_width + 6 * args.student_width)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator_for(memory=False)
    batch = inputs(args)
    tokens = args.batch * (args.length - 1)
    uncertainty, _ = ARMS[args.arm]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32, arm {args.arm}, V = {args.vocab}, "
          f"d_t = {args.teacher_width}, d_s = {args.student_width}, B = {args.batch}, L = {args.length} "
          f"({tokens} scored positions); load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'rows':>6s} {'block':>6s} {'chunks':>6s} {'wall s':>7s} {'CPU s':>7s} {'us/token':>9s} "
          f"{'GFLOP/cpu-s':>11s} {'ops/call':>9s}   (wall per call)")
    for rows in (int(r) for r in args.rows.split(",")):
        whole = rows >= args.length - 1
        n_chunks = -(-args.batch // (rows // (args.length - 1))) if whole else args.batch * -(-(args.length - 1) // rows)
        passes = 2 if uncertainty and not whole else 1  # a cut sequence's entropies need a teacher-only pass
        for block in sorted({min(int(b) or rows, rows) for b in args.blocks.split(",")}):
            one_call(batch, rows, block, args.arm)  # warm-up
            walls, cpus = [], []
            for _ in range(args.repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                one_call(batch, rows, block, args.arm)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            ops = op_count(lambda: one_call(batch, rows, block, args.arm)) if args.ops else 0
            print(f"{rows:6d} {block:6d} {n_chunks:6d} {wall:7.2f} {cpu:7.2f} {wall / tokens * 1e6:9.0f} "
                  f"{head_flops(args, passes) / cpu / 1e9:11.1f} {ops or '-':>9}   " + ", ".join(f"{w:.2f}" for w in walls),
                  flush=True)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
