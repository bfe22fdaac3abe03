"""Checkpoints: what resuming a run needs, as data only (no pickles), written once per report.

Layout of `<dir>/step_0000100/`:

    model.safetensors       the student's weights (safetensors handles GPT-2's tied head)
    optimizer.safetensors   the optimizer's per-parameter tensors (AdamW: step, exp_avg, exp_avg_sq),
                            named "<param index>.<name>"
    state.json              step, the optimizer's param groups and non-tensor state, the LR schedule,
                            the grad scaler, every RNG (python, numpy, torch, CUDA), the loop's `extra`

Nothing here is read with pickle: safetensors and JSON hold data only, so a checkpoint
folder someone else could write to (a shared sweep folder) cannot make kdsweep run code.
A `state.pt` (the pickled state of kdsweep before this layout, or anything planted under
that name) is refused with `CheckpointError`, never unpickled. A sweep hands Ray no copy of
these (sweeps/trial.py reports metrics only and a restarted trial resumes from its own run
folder), so each is written exactly once.

A checkpoint is written to a temporary folder and renamed into place, so a crash mid-write
never leaves a half checkpoint that `latest_checkpoint` would pick up; the `keep` newest are
kept. A checkpoint can still be damaged afterwards (a disk or network file system error, a
copy cut short). `restore_latest` reads a checkpoint completely before it changes the model,
and when the newest one cannot be read it sets it aside (renamed `corrupt_step_...`, never
deleted: it is evidence) and resumes from the one before.

A trial that will never resume (ASHA stopped it) keeps only its newest weights:
`drop_resume_state` deletes its optimizer state and its older checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from kdsweep.distill.errors import DataError
from kdsweep.distill.files.atomic import put_in_place, temp_path, write_atomic
from kdsweep.distill.files.diskfull import disk_full_as_oserror
from kdsweep.distill.files.numbers import dumps
from kdsweep.distill.seeding import rng_state, set_rng_state

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
LEGACY_STATE = "state.pt"  # pickled: refused
CORRUPT_PREFIX = "corrupt_"
FORMAT = 2


class CheckpointError(DataError):
    """A checkpoint kdsweep will not load: not data-only, of another format, or not resumable."""


def save_checkpoint(root: str | Path, step: int, model, optimizer, scheduler, scaler, extra: dict, keep: int) -> Path:
    root = Path(root)
    final = root / f"step_{step:07d}"
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with disk_full_as_oserror(tmp):
            save_model(model, str(tmp / WEIGHTS))  # handles GPT-2's tied lm_head/wte weights
            tensors, groups, values = _optimizer_parts(optimizer.state_dict())
            save_file(tensors, str(tmp / OPTIMIZER))
            state = {"format": FORMAT, "step": step, "resumable": True,
                     "optimizer": {"param_groups": groups, "values": values},
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                     "extra": extra}
            (tmp / STATE).write_text(dumps(state))  # inside the temp folder: put_in_place fsyncs it
        put_in_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full) leaves no half checkpoint
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def folder_bytes(path: str | Path) -> int:
    """Bytes of the files in a checkpoint folder (what writing it cost)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders in `root`, oldest first: every `step_*` holding weights and a state file
    (a refused `state.pt` included, so that resuming names it instead of silently skipping it)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*")
                  if (p / WEIGHTS).is_file() and ((p / STATE).is_file() or (p / LEGACY_STATE).is_file()))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(path: str | Path) -> dict:
    """A checkpoint's state.json, checked to be this format's data (never a pickle)."""
    path = Path(path)
    if not (path / STATE).is_file():
        if (path / LEGACY_STATE).is_file():
            raise CheckpointError(f"checkpoint {path}: holds {LEGACY_STATE}, a pickle; kdsweep loads only data-only "
                                  f"checkpoints ({STATE} + safetensors) and never unpickles one (a pickle can run "
                                  "code); start the run again with --restart")
        raise CheckpointError(f"checkpoint {path}: no {STATE}")
    try:
        state = json.loads((path / STATE).read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path / STATE}: not JSON (a kdsweep checkpoint state is JSON data; "
                              "this file was not written by kdsweep or is damaged)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint {path / STATE}: format {found!r}, this kdsweep reads format {FORMAT}")
    return state


def load_checkpoint(path: str | Path, model, optimizer, scheduler, scaler) -> tuple[int, dict]:
    """Restore everything in place; returns (step, extra).

    Every file is read and checked before anything is changed, so a damaged checkpoint
    raises without leaving the model half-loaded.
    """
    path = Path(path)
    state = read_state(path)
    if not state["resumable"]:
        raise CheckpointError(f"checkpoint {path}: its optimizer state was dropped (the trial was stopped early); "
                              "it holds the weights only and cannot resume training")
    with safe_open(str(path / WEIGHTS), framework="pt"):
        pass  # parses the header and checks the file holds every tensor it declares
    opt_state = _optimizer_state_dict(load_file(str(path / OPTIMIZER)), state["optimizer"], optimizer)
    load_model(model, str(path / WEIGHTS))
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]


def drop_resume_state(root: str | Path) -> int:
    """For a run that will never resume: keep only the newest checkpoint's weights and state, marked
    not resumable; delete its optimizer state and every older checkpoint. Returns the bytes freed."""
    found = list_checkpoints(root)
    before = sum(folder_bytes(c) for c in found)
    for old in found[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    if found and (found[-1] / OPTIMIZER).is_file():
        newest = found[-1]
        try:
            state = read_state(newest)
        except CheckpointError:
            return before - folder_bytes(newest)  # not ours to rewrite: leave it as it is
        _write_json(newest / STATE, {**state, "resumable": False, "optimizer": None})
        (newest / OPTIMIZER).unlink()
    return before - sum(folder_bytes(c) for c in found[-1:] if c.is_dir())


def restore_latest(root: str | Path, model, optimizer, scheduler, scaler, log) -> tuple[Path | None, int, dict | None]:
    """Load the newest readable checkpoint in `root`.

    Returns (checkpoint, step, extra), or (None, 0, None) when there is none to load. A checkpoint
    that fails to load is logged, renamed aside, and the previous one is tried.
    """
    for ckpt in list_checkpoints(root)[::-1]:
        try:
            step, extra = load_checkpoint(ckpt, model, optimizer, scheduler, scaler)
            return ckpt, step, extra
        except Exception as e:  # any read error: truncated safetensors, bad JSON, a missing key, a pickle
            log(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "trying the previous one")
            if ckpt.exists():
                ckpt.rename(ckpt.with_name(CORRUPT_PREFIX + ckpt.name))
    return None, 0, None


# ---- the optimizer's state as tensors + JSON -------------------------------------------------


def _optimizer_parts(sd: dict) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """An optimizer's state_dict split into ({"<param>.<name>": tensor}, param groups, {param: {name: value}})
    for the values that are not tensors."""
    tensors, values = {}, {}
    for param, entry in sd["state"].items():
        for name, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{param}.{name}"] = v.detach().contiguous()
            else:
                values.setdefault(str(param), {})[name] = v
    return tensors, sd["param_groups"], values


def _optimizer_state_dict(tensors: dict[str, torch.Tensor], saved: dict, optimizer) -> dict:
    """The state_dict `optimizer.load_state_dict` takes, from the checkpoint's parts. JSON has no
    tuples: a group value that is a tuple in the live optimizer (AdamW's betas) is made one again."""
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        param, _, name = key.partition(".")
        state.setdefault(int(param), {})[name] = t
    for param, entry in saved["values"].items():
        state.setdefault(int(param), {}).update(entry)
    groups = []
    for group, live in zip(saved["param_groups"], optimizer.param_groups):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, dumps(obj))
