"""The per-run JSONL metric log: one JSON object per line, appended, surviving restarts.

Tune's own result files lose rows reported before a trial restore; this log is
the run's complete history. On resume from a checkpoint at step k, rows after
step k (written by the interrupted attempt, about to be re-run identically) are
dropped first, so every step appears once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

LOG_NAME = "metrics.jsonl"


def _clean(v):
    # JSON has no NaN/inf: write them as strings a reader can map back.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLog:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_after(self, step: int) -> None:
        """Drop rows with step > `step` (atomic rewrite)."""
        rows = [r for r in read_log(self.path.parent) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)


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
