"""Peak memory of one KD loss forward+backward: naive reference, chunked kd_loss, fused loss.

Run from the repository root:

    python benchmarks/loss_memory.py                # from logits: chunked vs naive reference
    python benchmarks/loss_memory.py --from-hidden  # from hidden states: naive, chunked, fused

Every version runs in this process on the same inputs, one after the other. The
reported number is the peak memory ABOVE what existed just before the call (the
inputs), so it includes the gradients the call leaves behind in ``.grad``.

From logits (default): the inputs are student and teacher logits of (B, L, V) fp32
(0.82 GB each at the default size); ``kd_loss`` (distill/loss/kd.py) against the naive
reference (distill/loss/reference.py), gradient wrt the student logits.

From hidden states (``--from-hidden``): the inputs are what the models hand over
before their LM heads: student hidden states (B, L, d_s) and head (V, d_s), teacher
hidden states (B, L, d_t) and head (V, d_t), fp32; gradients wrt the student's hidden
states and head. The naive and chunked paths build both (B, L, V) logits from them
(teacher under no_grad) and count them; the fused path (distill/loss/fused.py) never
does. The fused path also runs with the teacher entropies precomputed outside the
call, as a teacher cache would hand them over (it then skips its teacher-only pass).
After one memory run of each, chunked and fused are timed: the median of ``--repeats``
forward+backward runs, wall and CPU seconds (process time, all threads: on a machine
shared with other jobs it varies less than the wall time).

CPU: peak RSS growth, sampled from /proc/self/statm every ~1 ms by a background
thread. glibc's mmap threshold is fixed at 1 MiB first, so every tensor above it
is mmapped and returned to the OS when freed: RSS then follows the live tensors, and
memory one version freed cannot hide the next version's allocations. (glibc's
default threshold adapts up to 32 MiB, below which freed chunks can stay in the
heap; the fused loss's default chunk temporaries are 17 MB.) The timed runs set it to
32 MiB, where glibc's own adaptation ends in a long-running process such as training,
so that chunk temporaries are reused from the heap instead of page-faulted in again
each time. CUDA (when available, inputs are put there): torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdsweep.distill.loss.fused import fused_kd_loss, teacher_entropy_from_hidden  # noqa: E402
from kdsweep.distill.loss.kd import kd_loss  # noqa: E402
from kdsweep.distill.loss.reference import ARMS, reference_kd_loss  # noqa: E402
from benchmarks.memory import MB, PeakRSS, fix_mmap_threshold  # noqa: E402


def measure(loss_fn, inputs, kwargs, trainable=(0,)) -> tuple[float, float, float]:
    """One forward+backward of ``loss_fn(*inputs, **kwargs)``, with fresh leaves requiring
    a gradient at the ``trainable`` indices: (peak extra bytes, seconds, loss value).
    ``measure.cpu_seconds`` holds the process CPU time of the last call."""
    inputs = [x.detach().requires_grad_(True) if i in trainable else x
              for i, x in enumerate(inputs)]
    gc.collect()
    cuda = inputs[0].is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_fn(*inputs, **kwargs)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        measure.cpu_seconds = time.process_time() - cpu_start
    extra = torch.cuda.max_memory_allocated() - baseline if cuda else rss.extra
    value = loss.item()
    del loss, inputs
    gc.collect()
    return extra, seconds, value


def make_inputs(batch, length, vocab, device):
    gen = torch.Generator().manual_seed(0)
    student = 2.0 * torch.randn(batch, length, vocab, generator=gen)
    teacher = 3.0 * torch.randn(batch, length, vocab, generator=gen)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[:, length - length // 32:] = -100  # some padding (16 positions at L=512)
    return student.to(device), teacher.to(device), labels.to(device)


def make_hidden_inputs(batch, length, vocab, student_width, teacher_width, device):
    """Hidden states and heads whose logits spread like make_inputs' (std 2 and 3)."""
    gen = torch.Generator().manual_seed(0)
    student_hidden = torch.randn(batch, length, student_width, generator=gen)
    student_head = 2.0 / student_width**0.5 * torch.randn(vocab, student_width, generator=gen)
    teacher_hidden = torch.randn(batch, length, teacher_width, generator=gen)
    teacher_head = 3.0 / teacher_width**0.5 * torch.randn(vocab, teacher_width, generator=gen)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[:, length - length // 32:] = -100
    return tuple(x.to(device) for x in (student_hidden, student_head, teacher_hidden,
                                        teacher_head, labels))


def on_logits(loss_fn):
    """A loss of hidden states and heads that builds both (B, L, V) logits for ``loss_fn``."""
    def loss(student_hidden, student_head, teacher_hidden, teacher_head, labels, **kwargs):
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_head.T  # (B, L, V), frozen teacher
        return loss_fn(student_hidden @ student_head.T, teacher_logits, labels, **kwargs)
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50_257)
    parser.add_argument("--arm", choices=list(ARMS), default="both")
    parser.add_argument("--reference-batch", type=int, default=None,
                        help="run the reference at this batch size instead (if it would not fit)")
    parser.add_argument("--from-hidden", action="store_true",
                        help="start from hidden states + LM heads and also run the fused loss")
    parser.add_argument("--student-width", type=int, default=512, help="d_s (--from-hidden)")
    parser.add_argument("--teacher-width", type=int, default=1280, help="d_t (--from-hidden)")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="the fused loss's chunk_rows (default: its own)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of chunked and fused (--from-hidden)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    uncertainty, smoothing = ARMS[args.arm]
    kwargs = dict(temperature=2.0, alpha=0.5, uncertainty=uncertainty, smoothing=smoothing,
                  weight_norm="mask")
    mmap_fixed = device == "cpu" and fix_mmap_threshold(2**20)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"arm {args.arm}, fp32" + (", glibc mmap threshold 1 MiB" if mmap_fixed else ""))
    if args.from_hidden:
        compare_from_hidden(args, kwargs, device)
    else:
        compare_from_logits(args, kwargs, device)


def compare_from_logits(args, kwargs, device) -> None:
    # Warm up (thread pools, allocator) so that neither measurement pays for it.
    measure(kd_loss, make_inputs(2, 8, args.vocab, device), kwargs)
    measure(reference_kd_loss, make_inputs(2, 8, args.vocab, device), kwargs)

    inputs = make_inputs(args.batch, args.length, args.vocab, device)
    logits_mb = inputs[0].numel() * inputs[0].element_size() / MB
    print(f"chunked:   B={args.batch} L={args.length} V={args.vocab} "
          f"(B*L={args.batch * args.length}); each logits tensor {logits_mb:.0f} MB")
    chunked_extra, chunked_s, chunked_loss = measure(kd_loss, inputs, kwargs)
    print(f"  peak extra {chunked_extra / MB:8.0f} MB   wall {chunked_s:6.2f} s   "
          f"loss {chunked_loss:.6f}")

    ref_batch = args.reference_batch or args.batch
    if ref_batch != args.batch:
        del inputs
        inputs = make_inputs(ref_batch, args.length, args.vocab, device)
        print(f"reference: SMALLER B={ref_batch} (B*L={ref_batch * args.length})")
    else:
        print("reference: same inputs")
    ref_extra, ref_s, ref_loss = measure(reference_kd_loss, inputs, kwargs)
    print(f"  peak extra {ref_extra / MB:8.0f} MB   wall {ref_s:6.2f} s   loss {ref_loss:.6f}")
    scale = args.batch / ref_batch
    print(f"ratio reference / chunked peak extra: {ref_extra * scale / chunked_extra:.2f}"
          + (f" (reference scaled by {scale:g} to the chunked size)" if scale != 1 else ""))


def compare_from_hidden(args, kwargs, device) -> None:
    if args.reference_batch is not None:
        raise SystemExit("--reference-batch applies to the from-logits comparison only")
    fused_kwargs = dict(kwargs, chunk_rows=args.chunk_rows)
    trainable = (0, 1)  # student hidden states and head
    naive, chunked = on_logits(reference_kd_loss), on_logits(kd_loss)
    small = make_hidden_inputs(2, 8, args.vocab, args.student_width, args.teacher_width, device)
    for loss_fn, loss_kwargs in ((fused_kd_loss, fused_kwargs), (chunked, kwargs),
                                 (naive, kwargs)):  # warm-up
        measure(loss_fn, small, loss_kwargs, trainable)

    inputs = make_hidden_inputs(args.batch, args.length, args.vocab, args.student_width,
                                args.teacher_width, device)
    input_mb = sum(x.numel() * x.element_size() for x in inputs) / MB
    logits_mb = args.batch * args.length * args.vocab * 4 / MB
    print(f"from hidden states: B={args.batch} L={args.length} (B*L={args.batch * args.length}) "
          f"V={args.vocab} d_s={args.student_width} d_t={args.teacher_width}; inputs "
          f"{input_mb:.0f} MB; one (B, L, V) fp32 logits tensor would be {logits_mb:.0f} MB")
    entropy = teacher_entropy_from_hidden(inputs[2], inputs[3], chunk_rows=args.chunk_rows)
    paths = {  # name -> (loss, kwargs)
        "fused": (fused_kd_loss, fused_kwargs),
        "fused, teacher entropy given": (
            functools.partial(fused_kd_loss, teacher_entropy=entropy), fused_kwargs),
        "chunked kd_loss + logits": (chunked, kwargs),
        "naive reference + logits": (naive, kwargs),
    }
    extra = {}
    print("memory (one run each):")
    for name, (loss_fn, loss_kwargs) in paths.items():
        extra[name], seconds, value = measure(loss_fn, inputs, loss_kwargs, trainable)
        print(f"  {name:30s} peak extra {extra[name] / MB:7.0f} MB   wall {seconds:6.2f} s   "
              f"loss {value:.6f}")
    fused_extra = extra["fused"]
    print(f"peak extra fused / naive:   {fused_extra / extra['naive reference + logits']:.3f}")
    print(f"peak extra fused / chunked: {fused_extra / extra['chunked kd_loss + logits']:.3f}")

    if device == "cpu":
        fix_mmap_threshold(32 * 2**20)
    print(f"time (median of {args.repeats} forward+backward runs):")
    wall, cpu = {}, {}
    for name in ("chunked kd_loss + logits", "fused", "fused, teacher entropy given"):
        loss_fn, loss_kwargs = paths[name]
        runs = []
        for _ in range(args.repeats):
            runs.append((measure(loss_fn, inputs, loss_kwargs, trainable)[1],
                         measure.cpu_seconds))
        wall[name] = statistics.median(run[0] for run in runs)
        cpu[name] = statistics.median(run[1] for run in runs)
        print(f"  {name:30s} wall {wall[name]:6.2f} s   CPU {cpu[name]:6.2f} s   (wall runs: "
              f"{', '.join(f'{run[0]:.2f}' for run in runs)})")
    for name in ("fused", "fused, teacher entropy given"):
        print(f"{name} / chunked: wall {wall[name] / wall['chunked kd_loss + logits']:.2f}, "
              f"CPU {cpu[name] / cpu['chunked kd_loss + logits']:.2f}")


if __name__ == "__main__":
    main()
