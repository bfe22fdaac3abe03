"""Peak memory of a piece of code, measured the same way by every benchmark.

CPU: peak RSS growth above the RSS at entry, sampled from /proc/self/statm every ~1 ms
by a background thread. Call ``fix_mmap_threshold(2**20)`` first (glibc): every
allocation above 1 MiB is then mmapped and returned to the OS when freed, so RSS
follows the live tensors and memory one measurement freed cannot hide the next one's
allocations. (glibc's default threshold adapts up to 32 MiB, below which freed chunks
can stay in its heap.)

Timing wants the opposite: a long-running training process ends up with glibc's adapted
32 MiB threshold, where temporaries below it are reused from the heap instead of being
page-faulted in again each time. ``allocator_for(memory=...)`` switches between the two
(``MEASURE_THRESHOLD`` and ``TIMING_THRESHOLD``), trimming the heap before a memory
measurement so that memory freed earlier and kept by the heap cannot hide new allocations.

CUDA: ``torch.cuda.max_memory_allocated`` above ``memory_allocated`` at entry.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import torch

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MB = 1e6
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def trim_heap() -> None:
    """glibc only: hand the heap's free memory back to the OS, so RSS starts from live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def fix_mmap_threshold(threshold: int) -> bool:
    """glibc only: mmap every allocation above ``threshold`` (no dynamic raise). True if set."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold) == 1
    except (OSError, AttributeError):
        return False


MEASURE_THRESHOLD, TIMING_THRESHOLD = 2**20, 32 * 2**20


def allocator_for(memory: bool) -> bool:
    """Set glibc's mmap threshold for a memory measurement (1 MiB, heap trimmed) or for timing
    (32 MiB). True if glibc took it."""
    ok = fix_mmap_threshold(MEASURE_THRESHOLD if memory else TIMING_THRESHOLD)
    if memory:
        trim_heap()
    return ok


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


class PeakExtra:
    """Peak memory above the memory at entry on ``device``: RSS on CPU, allocator on CUDA.

    ``extra`` (bytes) is set on exit. On CUDA it synchronizes at entry and exit.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.extra = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self._baseline
        else:
            self._rss.__exit__(*exc)
            self.extra = self._rss.extra
