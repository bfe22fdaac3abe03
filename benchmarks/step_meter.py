"""One training step measured: wall and CPU seconds, peak extra memory, seconds per phase.

Shared by every variant of benchmarks/vs_seed.py, so that the study's Trainer and kdsweep's
step are measured by the same code: ``begin()`` right before the step (after the previous
step's ``zero_grad``: the steady state), ``end()`` right after its optimizer step. A step is either timed or, with
``begin(memory=True)``, measured for peak memory (the sampler thread would skew its time);
on CPU glibc's allocator is set for the one or the other (``benchmarks.memory.allocator_for``). Phases
come from a ``distill.run.phases.PhaseTimer`` the step charges; ``end(rest=NAME)`` charges
whatever the step spent outside the timed phases to ``NAME``.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.memory import PeakExtra, allocator_for


class StepMeter:
    def __init__(self, device: torch.device, timer):
        self.device, self.timer = torch.device(device), timer
        self.steps: list[dict] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin(self, memory: bool = False) -> None:
        """Start a step; ``memory``: sample its peak memory (a background thread on CPU, which
        costs CPU time itself: a step is either timed or measured for memory, not both)."""
        self._sync()
        if self.device.type == "cpu":
            allocator_for(memory=memory)
        self._memory = PeakExtra(self.device).__enter__() if memory else None
        self._phases, self._phases_cpu = dict(self.timer.wall), dict(self.timer.cpu)
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def end(self, rest: str | None = None) -> None:
        self._sync()
        wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        if self._memory is not None:
            self._memory.__exit__(None, None, None)
        phases = {k: v - self._phases.get(k, 0.0) for k, v in self.timer.wall.items()}
        phases_cpu = {k: v - self._phases_cpu.get(k, 0.0) for k, v in self.timer.cpu.items()}
        if rest is not None:
            phases[rest] = phases.get(rest, 0.0) + max(0.0, wall - sum(phases.values()))
            phases_cpu[rest] = phases_cpu.get(rest, 0.0) + max(0.0, cpu - sum(phases_cpu.values()))
        self.steps.append({"wall": wall, "cpu": cpu, "phases": phases, "phases_cpu": phases_cpu,
                           "peak_extra": None if self._memory is None else self._memory.extra})

    def summary(self, skip: int) -> dict:
        """Over the steps after the first ``skip`` (warm-up): medians of wall and CPU seconds and
        mean seconds per phase of the timed steps, the largest peak extra of the memory steps."""
        steps = self.steps[skip:]
        timed = [s for s in steps if s["peak_extra"] is None]
        memory = [s["peak_extra"] for s in steps if s["peak_extra"] is not None]
        if not timed:
            raise ValueError(f"no timed step after {skip} warm-up step(s)")
        names = {name for s in timed for name in s["phases"]}
        return {
            "wall": statistics.median(s["wall"] for s in timed),
            "cpu": statistics.median(s["cpu"] for s in timed),
            "walls": [s["wall"] for s in timed],
            "peak_extra": max(memory) if memory else None,
            "phases": {n: statistics.mean(s["phases"].get(n, 0.0) for s in timed) for n in names},
            "phases_cpu": {n: statistics.mean(s["phases_cpu"].get(n, 0.0) for s in timed) for n in names},
        }
