"""Where and how tensors run: device, mixed precision, process rank (docs/method.md §4).

One place decides the device and the autocast dtype, and every model call that
should run in it (training forward passes, held-out scoring of student *and*
teacher, sampling) goes through `Runtime.autocast()` or `autocast(device, dtype)`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from kdsweep.distill.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` to `dtype` on `device`, or a no-op when dtype is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run `model` in eval mode (no dropout), then restore the caller's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class Runtime:
    """Where and how tensors run: device, resolved precision, process rank."""

    device: torch.device
    precision: str  # resolved: "fp32" | "bf16" | "fp16"
    rank: int = 0
    world_size: int = 1

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES.get(self.precision)

    def autocast(self):
        return autocast(self.device, self.autocast_dtype)


def resolve_runtime(precision: str = "auto", device: str = "auto") -> Runtime:
    """fp16/bf16 autocast on CUDA (bf16 where supported), fp32 on CPU unless asked (method §4).

    `precision` and `device` are the TrainConfig values ("auto" resolves here); the rank and
    world size come from torch.distributed when a process group is up (Ray Train DDP).
    """
    cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is visible")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    dev = torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    return Runtime(dev, precision, rank, world)
