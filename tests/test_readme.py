"""The README's two commands are what CI and a newcomer run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The command lines of the README's first code block (comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readmes_command_2_verbatim():
    demo, tests = readme_commands()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests], "`.ci/run` must run exactly the README's command 2 and nothing else"
    assert demo.startswith("bash scripts/setup.sh && ") and tests.startswith("bash scripts/setup.sh --tests && ")
