"""A run's folder: its metric log, its summary, its saved student.

    <run>/config.yaml      the TrainConfig it ran with
    <run>/metrics.jsonl    one JSON object per line, appended, surviving restarts
    <run>/metrics.json     the summary, written once the run has ended (`write_summary`)
    <run>/student/         the trained student (`save_student`), loadable with from_pretrained
    <run>/checkpoints/     see distill/run/checkpoint.py

Tune's own result files lose rows reported before a trial restore; the JSONL log
is the run's complete history. On resume from a checkpoint at step k, rows after
step k (written by the interrupted attempt, about to be re-run identically) are
dropped first, so every step appears once. Every file goes through
`distill.files.numbers.dumps`: no non-standard JSON (Infinity, NaN) is written.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kdsweep.distill.config import TrainConfig, dump_config
from kdsweep.distill.files.atomic import put_in_place, temp_path, write_atomic, write_new
from kdsweep.distill.files.diskfull import disk_full_as_oserror
from kdsweep.distill.files.numbers import dumps, number

LOG_NAME = "metrics.jsonl"
SUMMARY_NAME = "metrics.json"
CONFIG_NAME = "config.yaml"
STUDENT_DIR = "student"
CHECKPOINTS_DIR = "checkpoints"
# How a run ended (its summary's `status`): trained to its full budget, stopped early by a
# scheduler, or ended by a non-finite loss. The sweep layer adds the states only it can see.
COMPLETED, STOPPED_EARLY, DIVERGED = "completed", "stopped_early", "diverged"
# A run-log event: the attempt was handed a checkpoint (by Tune, after a lost node or a driver
# kill) that is not on disk, and trained again from step 0 instead of resuming.
RESTARTED = "restarted"


class RunLog:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            end = fh.tell()
            try:
                fh.write(dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as e:
                fh.truncate(end)  # a disk-full write must not leave half a line for the next row to join
                if end == 0:
                    self.path.unlink(missing_ok=True)  # nor an empty log the run never wrote a row to
                raise OSError(e.errno, e.strerror, str(self.path)) from e

    def truncate_after(self, step: int) -> int:
        """Drop rows with step > `step` (atomic rewrite; nothing to do without a log). Returns the
        last step of a training row dropped (0 if none): how far a lost attempt had got."""
        if not self.path.exists():
            return 0
        rows = read_log(self.path.parent)
        write_atomic(self.path, "".join(dumps(r) + "\n" for r in rows if r.get("step", 0) <= step))
        return max((r["step"] for r in rows if r.get("step", 0) > step and "event" not in r), default=0)


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / LOG_NAME
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
    return rows


def is_eval_row(row: dict) -> bool:
    """An evaluation row (val_ppl at a step), as opposed to an event (start, resumed, diverged, test)."""
    return "val_ppl" in row and "event" not in row and "step" in row


def eval_rows(run_dir: str | Path) -> list[dict]:
    return [r for r in read_log(run_dir) if is_eval_row(r)]


@dataclass(frozen=True)
class TrainReport:
    """One row a training run reports (to Tune, and to its run log): an eval row, or the row of its
    `diverged` event. The one place that knows which keys of a row say how the run stands
    (`ended_as`); Tune's results are these rows plus Tune's bookkeeping, which stays in `extra`."""

    step: int | None = None  # optimizer steps taken (diverged: the step whose loss was non-finite)
    val_ppl: float | None = None  # held-out ppl at `step` (inf in a diverged run's report)
    best_val_ppl: float | None = None  # lowest val ppl seen so far (for reading curves; never used to choose)
    best_step: int | None = None
    done_training: bool = False  # the run's final row: it trained its full budget
    diverged: bool = False  # a non-finite loss or val ppl ended the run (method §4)
    extra: Mapping[str, Any] = field(default_factory=dict)  # every other key: metrics, costs, event, Tune's

    @classmethod
    def from_row(cls, row: Mapping | None) -> TrainReport:
        """`row` as reported (a Tune result, a run-log row; None or {} when there is none yet)."""
        rest = dict(row or {})
        return cls(step=rest.pop("step", None), val_ppl=rest.pop("val_ppl", None),
                   best_val_ppl=rest.pop("best_val_ppl", None), best_step=rest.pop("best_step", None),
                   done_training=bool(rest.pop("done_training", False)), diverged=bool(rest.pop("diverged", False)),
                   extra=rest)

    def to_row(self) -> dict:
        """The row as reported and logged: `diverged` only in a diverged run's row, None values left out."""
        known = {"val_ppl": self.val_ppl, "best_val_ppl": self.best_val_ppl, "best_step": self.best_step}
        return ({"step": self.step} if self.step is not None else {}) | dict(self.extra) \
            | {k: v for k, v in known.items() if v is not None} | {"done_training": self.done_training} \
            | ({"diverged": True} if self.diverged else {})

    @property
    def ended_as(self) -> str:
        """How a run whose last report this is ended: DIVERGED, COMPLETED (its full budget), else
        STOPPED_EARLY (a scheduler stopped it at this row). No row says a run crashed: FAILED is the
        caller's to add (the sweep layer sees it as Tune's error)."""
        if self.diverged:
            return DIVERGED
        return COMPLETED if self.done_training else STOPPED_EARLY


@dataclass
class RunResult:
    status: str  # COMPLETED | STOPPED_EARLY | DIVERGED
    step: int  # last optimizer step taken (diverged: the step whose loss was non-finite)
    best_val_ppl: float  # lowest val ppl seen (for reading curves; never used to choose)
    best_step: int
    run_dir: Path
    last_row: dict | None = None  # the row the run reported last (eval row, or its diverged event)
    val_ppl: float | None = None  # the FINAL model's val ppl: the objective (completed runs)
    final_metrics: dict | None = None  # test-split metrics (reporting)
    val_metrics: dict | None = None  # the same metrics on the val split (choosing)


def write_summary(result: RunResult) -> Path:
    """`<run>/metrics.json`: status, step, the final val ppl (the objective), the best val ppl seen
    and its step, and the val/test metrics if any."""
    path = result.run_dir / SUMMARY_NAME
    write_atomic(path, _summary_text(result))
    return path


def write_summary_if_absent(result: RunResult) -> bool:
    """Write the summary unless the run wrote its own first (atomic create-if-absent: a run that
    ended by itself wins over a scheduler's verdict about it). Returns whether it wrote."""
    path = result.run_dir / SUMMARY_NAME
    if path.exists() or not result.run_dir.is_dir():
        return False
    return write_new(path, _summary_text(result))  # fails if the run's own summary appeared meanwhile


def _summary_text(result: RunResult) -> str:
    return dumps({"status": result.status, "step": result.step, "val_ppl": result.val_ppl,
                  "best_val_ppl": result.best_val_ppl, "best_step": result.best_step,
                  "val": result.val_metrics, "test": result.final_metrics}, indent=2) + "\n"


def finished_run(run_dir: Path) -> RunResult | None:
    """The RunResult of a run folder whose metrics.json says it ended, else None.

    `last_row` is what the run reported last: its final eval row (completed), the row it was
    stopped at (stopped early), or its diverged event (with val_ppl inf).
    """
    path = Path(run_dir) / SUMMARY_NAME
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    rows = [r for r in read_log(run_dir) if (r.get("event") == DIVERGED or is_eval_row(r))
            and r.get("step", 0) <= summary["step"]]
    if not rows:
        return None
    last = dict(rows[-1])
    if last.get("event") == DIVERGED:
        last["val_ppl"] = float("inf")
    return RunResult(summary["status"], summary["step"], number(summary["best_val_ppl"]), summary["best_step"],
                     Path(run_dir), last_row=last, val_ppl=summary.get("val_ppl"),
                     final_metrics=summary.get("test"), val_metrics=summary.get("val"))


# save_dtype -> the torch dtype's name (torch is imported only to save: reading a run folder needs none)
SAVE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# A saved student is for others to load (shared storage, `sweep export --students`): readable by group and
# others. safetensors (0.8) writes model.safetensors 0600 through a temp file, whatever the umask.
FILE_MODE, DIR_MODE = 0o644, 0o755


def make_readable(folder: Path) -> None:
    """`folder` and everything in it: files FILE_MODE, folders DIR_MODE."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


def save_student(student, tokenizer, out: Path, cfg: TrainConfig) -> None:
    """A folder `AutoModelForCausalLM/AutoTokenizer.from_pretrained` load directly, put in place
    whole (written beside it, then renamed) so no reader ever sees half a student. Saved in
    `cfg.save_dtype` (a converted copy: `student` itself is left as it is)."""
    import torch

    dtype = getattr(torch, SAVE_DTYPES[cfg.save_dtype])
    saved = student if dtype == torch.float32 else copy.deepcopy(student).to(dtype)  # deepcopy keeps the tied head tied
    tmp = temp_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with disk_full_as_oserror(tmp):
            saved.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            dump_config(cfg, tmp / "kdsweep_config.yaml")
        make_readable(tmp)  # safetensors writes 0600 whatever the umask
        put_in_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
