"""Checkpoints: safetensors weights + optimizer/scheduler/scaler/step/RNG state.

Layout: `<dir>/step_0000100/{model.safetensors, state.pt}`. A checkpoint is
written to a temporary folder and renamed into place, so a crash mid-write
never leaves a half checkpoint that `latest_checkpoint` would pick up.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from distill.seeding import rng_state, set_rng_state

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def save_checkpoint(root: str | Path, step: int, model, optimizer, scheduler, scaler, extra: dict, keep: int) -> Path:
    root = Path(root)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))  # handles GPT-2's tied lm_head/wte weights
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "extra": extra,
        },
        tmp / STATE,
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE).is_file() and (p / WEIGHTS).is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler, scaler) -> tuple[int, dict]:
    """Restore everything in place; returns (step, extra)."""
    path = Path(path)
    load_model(model, str(path / WEIGHTS))
    state = torch.load(path / STATE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]
