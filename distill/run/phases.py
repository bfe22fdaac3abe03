"""Where a training step's time goes: wall and CPU seconds per named phase.

`distill.run.step.optimizer_step` charges a timer with the phases below; the training loop
passes ``NO_TIMER`` (nothing measured, no device synchronisation), benchmarks and
`kdsweep estimate` pass a ``PhaseTimer``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

PHASES = ("teacher forward", "student forward", "loss", "backward", "optimizer")


@dataclass
class PhaseTimer:
    """Wall and process-CPU seconds per named phase, summed over every ``phase`` call.

    On CUDA each boundary synchronises the device, so that a phase is charged for its own
    kernels (and a timed step runs slower than an untimed one by those waits)."""

    device: torch.device = torch.device("cpu")
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._sync()
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


class _NoTimer:
    @staticmethod
    def phase(name: str):
        return contextlib.nullcontext()


NO_TIMER = _NoTimer()
