"""The front door: README's two commands are what CI and a newcomer run, the README stays short, and
every relative link of the README and docs/ reaches a file (and a heading, for an #anchor)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target), ![alt](target)


def readme_commands() -> list[str]:
    """The command lines of the README's first code block (comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readmes_command_2_verbatim():
    demo, tests = readme_commands()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests], "`.ci/run` must run exactly the README's command 2 and nothing else"
    assert demo.startswith("bash scripts/setup.sh && ") and tests.startswith("bash scripts/setup.sh --tests && ")


def test_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "README.md is the front door: 150 lines at most; the rest goes in docs/"
    first_block = re.search(r"^```.*$", text, re.M)
    assert first_block.group(0) == "```bash" and first_block.start() == text.index("```bash\n")  # no code before it
    assert text.index("```bash\n") < text.index("\n## ", text.index("## ") + 1)  # in the first section


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page (outside code blocks), duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", page.read_text()), re.M):
        base = slug(m.group(1))
        out.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return out


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))  # code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, mailto: ...


def test_the_link_checker_finds_links_and_headings():
    assert slug("What `analyze` writes") == "what-analyze-writes"
    assert slug("5. Metrics (held-out split, next-token positions)") == "5-metrics-held-out-split-next-token-positions"
    links = relative_links(README)
    assert "docs/img/report.png" in links and "docs/usage.md#terms" in links
    assert {"the-two-commands", "what-you-get", "workflow", "layout", "documentation"} <= anchors(README)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_docs_tensorboard_command_opens_the_folder_with_the_event_files():
    """`tensorboard --logdir` in the docs names the sweep's TensorBoard folder (where
    `sweeps.tracking.tensorboard_run` writes), not Tune's own `tune/` folder."""
    from kdsweep.sweeps.layout import SweepDir

    folder = SweepDir(Path("NAME")).tensorboard.relative_to("NAME")
    logdirs = [d for page in PAGES for d in re.findall(r"tensorboard --logdir (\S+)", page.read_text())]
    assert logdirs and all(d.rstrip("/").endswith(f"NAME/{folder}") for d in logdirs), logdirs


def test_the_module_map_names_modules_that_exist():
    """docs/layout.md's module-by-module map: every `name.py` listed under a folder is a file there,
    and every module of the four packages is listed (a moved or new module updates the map)."""
    block = FENCE.search((ROOT / "docs" / "layout.md").read_text()).group(0)
    listed, folder = set(), None
    for line in block.splitlines()[1:-1]:
        names = re.split(r"\s{2,}", line.strip())[0]
        if not line.startswith(" "):
            folder = names.split()[0].rstrip("/")
            names = " ".join(names.split()[1:])
        listed |= {f"{folder}/{n}" for n in re.findall(r"[\w./]+\.py", names)}
    missing = sorted(p for p in listed if not (ROOT / p).is_file())
    assert not missing, f"docs/layout.md lists modules that do not exist: {missing}"
    modules = {p.relative_to(ROOT).as_posix() for f in ("distill", "sweeps", "analysis")
               for p in (ROOT / f).rglob("*.py") if p.name != "__init__.py"}
    assert not sorted(modules - listed), f"docs/layout.md does not list: {sorted(modules - listed)}"
