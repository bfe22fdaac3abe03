"""Peak memory of one kd_loss forward+backward: chunked (distill.loss) vs naive reference.

Run from the repository root:

    python benchmarks/loss_memory.py            # B=8, L=512, V=50257, arm "both", fp32

Both versions run in this process on the same inputs, one after the other. The
reported number is the peak memory ABOVE what existed just before the call
(the inputs: student and teacher logits of (B, L, V) fp32, 0.82 GB each at the
default size), so it includes the gradient wrt the student logits that the
call leaves behind in ``student.grad``.

CPU: peak RSS growth, sampled from /proc/self/statm every ~1 ms by a background
thread. CUDA (when available, inputs are put there): torch.cuda.max_memory_allocated.
The naive reference is distill/loss_reference.py, the one tests check kd_loss against.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.loss import kd_loss  # noqa: E402
from distill.loss_reference import ARMS, reference_kd_loss  # noqa: E402

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MB = 1e6


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class PeakRSS:
    """Context manager: peak RSS above the RSS at entry, sampled every ``interval`` s."""

    def __init__(self, interval: float = 1e-3):
        self.interval = interval
        self.extra = 0

    def __enter__(self):
        self.baseline = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.baseline


def measure(loss_fn, student, teacher, labels, kwargs) -> tuple[float, float, float]:
    """One forward+backward of ``loss_fn``: (peak extra bytes, seconds, loss value)."""
    student = student.detach().requires_grad_(True)
    gc.collect()
    if student.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        start = time.perf_counter()
        loss = loss_fn(student, teacher, labels, **kwargs)
        loss.backward()
        if student.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    extra = torch.cuda.max_memory_allocated() - baseline if student.is_cuda else rss.extra
    value = loss.item()
    del loss, student
    gc.collect()
    return extra, seconds, value


def make_inputs(batch, length, vocab, device):
    gen = torch.Generator().manual_seed(0)
    student = 2.0 * torch.randn(batch, length, vocab, generator=gen)
    teacher = 3.0 * torch.randn(batch, length, vocab, generator=gen)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[:, length - length // 32:] = -100  # some padding (16 positions at L=512)
    return student.to(device), teacher.to(device), labels.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50_257)
    parser.add_argument("--arm", choices=list(ARMS), default="both")
    parser.add_argument("--reference-batch", type=int, default=None,
                        help="run the reference at this batch size instead (if it would not fit)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    uncertainty, smoothing = ARMS[args.arm]
    kwargs = dict(temperature=2.0, alpha=0.5, uncertainty=uncertainty, smoothing=smoothing,
                  weight_norm="mask")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"arm {args.arm}, fp32")
    # Warm up (thread pools, allocator) so that neither measurement pays for it.
    measure(kd_loss, *make_inputs(2, 8, args.vocab, device), kwargs)
    measure(reference_kd_loss, *make_inputs(2, 8, args.vocab, device), kwargs)

    inputs = make_inputs(args.batch, args.length, args.vocab, device)
    logits_mb = inputs[0].numel() * inputs[0].element_size() / MB
    print(f"chunked:   B={args.batch} L={args.length} V={args.vocab} "
          f"(B*L={args.batch * args.length}); each logits tensor {logits_mb:.0f} MB")
    chunked_extra, chunked_s, chunked_loss = measure(kd_loss, *inputs, kwargs)
    print(f"  peak extra {chunked_extra / MB:8.0f} MB   wall {chunked_s:6.2f} s   "
          f"loss {chunked_loss:.6f}")

    ref_batch = args.reference_batch or args.batch
    if ref_batch != args.batch:
        del inputs
        inputs = make_inputs(ref_batch, args.length, args.vocab, device)
        print(f"reference: SMALLER B={ref_batch} (B*L={ref_batch * args.length})")
    else:
        print("reference: same inputs")
    ref_extra, ref_s, ref_loss = measure(reference_kd_loss, *inputs, kwargs)
    print(f"  peak extra {ref_extra / MB:8.0f} MB   wall {ref_s:6.2f} s   loss {ref_loss:.6f}")
    scale = args.batch / ref_batch
    print(f"ratio reference / chunked peak extra: {ref_extra * scale / chunked_extra:.2f}"
          + (f" (reference scaled by {scale:g} to the chunked size)" if scale != 1 else ""))


if __name__ == "__main__":
    main()
