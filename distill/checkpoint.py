"""Checkpoints: safetensors weights + optimizer/scheduler/scaler/step/RNG state.

Layout: `<dir>/step_0000100/{model.safetensors, state.pt}`. A checkpoint is
written to a temporary folder and renamed into place, so a crash mid-write
never leaves a half checkpoint that `latest_checkpoint` would pick up.

A checkpoint can still be damaged afterwards (a disk or network file system
error, a copy cut short). `restore_latest` reads a checkpoint completely
before it changes the model, and when the newest one cannot be read it sets it
aside (renamed `corrupt_step_...`, never deleted: it is evidence) and resumes
from the one before.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from distill.diskfull import disk_full_as_oserror
from distill.seeding import rng_state, set_rng_state

WEIGHTS = "model.safetensors"
STATE = "state.pt"
CORRUPT_PREFIX = "corrupt_"


def save_checkpoint(root: str | Path, step: int, model, optimizer, scheduler, scaler, extra: dict, keep: int) -> Path:
    root = Path(root)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with disk_full_as_oserror(tmp):
            save_model(model, str(tmp / WEIGHTS))  # handles GPT-2's tied lm_head/wte weights
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "extra": extra,
            }
            torch.save(state, tmp / STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full) leaves no half checkpoint
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
    """Restore everything in place; returns (step, extra).

    Both files are read and checked before anything is changed, so a damaged
    checkpoint raises without leaving the model half-loaded.
    """
    path = Path(path)
    with safe_open(str(path / WEIGHTS), framework="pt"):
        pass  # parses the header and checks the file holds every tensor it declares
    state = torch.load(path / STATE, weights_only=False)
    load_model(model, str(path / WEIGHTS))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]


def restore_latest(root: str | Path, resume_from: str | Path | None, model, optimizer, scheduler, scaler,
                   log) -> tuple[Path | None, int, dict | None]:
    """Load `resume_from` (the checkpoint a scheduler hands back), else the newest readable one in `root`.

    Returns (checkpoint, step, extra), or (None, 0, None) when there is none to load. A checkpoint
    that fails to load is logged; one in `root` is renamed aside and the previous one is tried.
    """
    candidates = ([Path(resume_from)] if resume_from else []) + list_checkpoints(root)[::-1]
    for ckpt in candidates:
        try:
            step, extra = load_checkpoint(ckpt, model, optimizer, scheduler, scaler)
            return ckpt, step, extra
        except Exception as e:  # any read error: truncated safetensors, a broken zip, a missing key
            log(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "trying the previous one")
            if ckpt.parent == Path(root) and ckpt.exists():
                ckpt.rename(ckpt.with_name(CORRUPT_PREFIX + ckpt.name))
    return None, 0, None
