"""Text that fits a terminal's width: tables whose columns go by priority, lines packed by whole entries.

Shared by the live view (`sweeps.console`, rich Text) and the plain tables of `sweep status`
and `sweep list` (`sweeps.status`). A width of None means no limit (a log file, a pipe).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

GAP = 2  # spaces between two table columns
MIN_CUT = 16  # narrower than this, a column that may be cut is dropped instead


def is_interactive(out: TextIO) -> bool:
    """A terminal that can redraw in place: a TTY whose TERM is not dumb."""
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


def output_width(out: TextIO | None = None) -> int | None:
    """The terminal's width when `out` (default stdout) is an interactive terminal, else None
    (a log file or a pipe: lines are not wrapped for it)."""
    return shutil.get_terminal_size().columns if is_interactive(out or sys.stdout) else None


@dataclass(frozen=True)
class Column:
    name: str
    priority: int = 0  # 0: never dropped nor cut; the highest is dropped first
    right: bool = False  # right-aligned (numbers)
    cut: bool = False  # cut to fit (ending in an ellipsis) before it is dropped


def fit_columns(columns: list[Column], rows: list[list[str]], width: int | None) -> list[tuple[int, int]]:
    """(column index, width) of the columns that fit in `width`: the column of highest priority goes
    first (the rightmost of equals), a column that may be cut is cut instead when that is enough
    (down to MIN_CUT), until the table fits or only the priority-0 columns are left."""
    widths = [max([len(c.name)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    kept = list(range(len(columns)))
    while width is not None and (total := sum(widths[i] for i in kept) + GAP * (len(kept) - 1)) > width:
        droppable = [i for i in kept if columns[i].priority > 0]
        if not droppable:
            break
        last = max(reversed(droppable), key=lambda i: columns[i].priority)
        if columns[last].cut and widths[last] - (total - width) >= MIN_CUT:
            widths[last] -= total - width
            break
        kept.remove(last)
    return [(i, widths[i]) for i in kept]


def essential_width(columns: list[Column], rows: list[list[str]]) -> int:
    """The width of the priority-0 columns alone: narrower than this, a table cannot show them whole."""
    widths = [max([len(c.name)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns) if c.priority == 0]
    return sum(widths) + GAP * (len(widths) - 1)


def cell(text: str, width: int, right: bool = False) -> str:
    if len(text) > width:
        text = text[: max(0, width - 1)] + "…"
    return text.rjust(width) if right else text.ljust(width)


def fitted_rows(columns: list[Column], rows: list[list[str]], width: int | None) -> list[list[tuple[Column, str]]]:
    """The header and every row as (column, padded cell) pairs of the columns that fit."""
    fitted = fit_columns(columns, rows, width)
    return [[(columns[i], cell(r[i], w, columns[i].right)) for i, w in fitted]
            for r in [[c.name for c in columns], *rows]]


def table(columns: list[Column], rows: list[list[str]], width: int | None) -> list[str]:
    """A plain-text table (header first) fitted to `width`."""
    return [(" " * GAP).join(text for _, text in line).rstrip() for line in fitted_rows(columns, rows, width)]


def pack(entries: list, width: int | None, sep: str = "   ", indent: str = "  ") -> list:
    """Entries (str or rich Text) on as few lines as `width` allows, never split inside one;
    lines after the first start with `indent`."""
    lines: list = []
    for e in entries:
        if lines and (width is None or len(lines[-1]) + len(sep) + len(e) <= width):
            lines[-1] = lines[-1] + sep + e
        else:
            lines.append(type(e)(indent) + e if lines else e)
    return lines


def command_lines(commands: list[tuple[str, str]], width: int | None, indent: str = "  ") -> list[str]:
    """(command, what it does) pairs as `command   # what`, the comments aligned; where one of
    them does not fit `width`, every comment goes on its own line above its command."""
    pad = max(len(c) for c, _ in commands) + 3
    lines = [f"{indent}{command.ljust(pad)}# {what}" for command, what in commands]
    if width is None or max(map(len, lines)) <= width:
        return lines
    return [line for command, what in commands for line in (f"{indent}# {what}", f"{indent}{command}")]


def kdsweep_command() -> str:
    """`kdsweep` as the user can run it from here: the bare name where PATH finds this interpreter's
    script, else that script's path (relative to the working folder when under it, e.g. `.venv/bin/kdsweep`
    after `scripts/setup.sh`), else `python -m kdsweep` with this interpreter."""
    script = Path(sys.executable).parent / "kdsweep"  # not resolved: a venv's python is a symlink
    if not script.is_file():
        return f"{sys.executable} -m kdsweep"
    found = shutil.which("kdsweep")
    if found and os.path.samefile(found, script):
        return "kdsweep"
    relative = os.path.relpath(script)
    return str(script) if relative.startswith("..") else relative
