"""The shape of the code: no import cycles, layers import downwards only, reading a sweep needs no Ray.

Layers, bottom to top: `kdsweep.distill` (one run) < `kdsweep.sweeps` (Ray Tune + Optuna; its
reading side without Ray) < `kdsweep.analysis` (no Ray) < `kdsweep` itself (the command line).
The top-level folders install as `kdsweep.<folder>` (pyproject's package-dir). Imports inside
functions count: a cycle through a function-local import is still a cycle.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import open_study
from tests.fixtures import write_finished_sweep

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("kdsweep", "distill", "sweeps", "analysis", "search_spaces")
PACKAGES = ("kdsweep",) + tuple(f"kdsweep.{f}" for f in FOLDERS[1:])
# package -> packages it must never import (directly or inside a function)
FORBIDDEN = {
    "distill": {"sweeps", "analysis", "kdsweep", "ray"},
    "sweeps": {"analysis", "kdsweep"},
    "analysis": {"kdsweep", "ray"},
}


def module_imports() -> dict[str, set[str]]:
    """{module: every absolute module name it imports, at any depth of its body}."""
    out = {}
    for folder in FOLDERS:
        for f in (ROOT / folder).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            name = name if folder == "kdsweep" else f"kdsweep.{name}"
            names = set()
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            out[name] = names
    return out


def internal_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a `from pkg import name` resolves to pkg.name if a module)."""
    graph = {}
    for mod, names in imports.items():
        edges = set()
        for n in names:
            while n and n not in imports:
                n = n.rpartition(".")[0]
            if n and n != mod and n not in PACKAGES:
                edges.add(n)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(internal_graph(module_imports())) == []


def layer(module: str) -> str:
    """kdsweep.sweeps.study -> 'sweeps'; kdsweep.cli -> 'kdsweep'; ray.tune -> 'ray'."""
    parts = module.split(".")
    if parts[0] == "kdsweep" and len(parts) > 1 and parts[1] in FOLDERS:
        return parts[1]
    return parts[0]


def test_layer_names():
    assert [layer(m) for m in ("kdsweep.sweeps.study", "kdsweep.cli", "kdsweep", "ray.tune", "kdsweep.distill")] == \
        ["sweeps", "kdsweep", "kdsweep", "ray", "distill"]


def test_no_module_imports_the_old_top_level_names():
    """`sweeps` and `analysis` are also PyPI packages: an import of the bare name would load whichever is installed."""
    old = {f for f in FOLDERS if f != "kdsweep"}
    bad = sorted(f"{mod} imports {n}" for mod, names in module_imports().items() for n in names
                 if n.split(".")[0] in old)
    assert bad == []


OLD_NAME_IN_CODE = re.compile(r"(?:^|[;\n]\s*)(?:import|from)\s+(?:distill|sweeps|analysis)\b")


def test_no_code_string_imports_the_old_top_level_names():
    """Code run from a string (`python -c`, a timed import) must import `kdsweep.*` too: a bare `distill`
    resolves only with the repository as the working directory, a bare `sweeps` to PyPI's package."""
    assert OLD_NAME_IN_CODE.search("import sweeps.trial, distill.train") and \
        OLD_NAME_IN_CODE.search("x = 1; from distill.splits import f") and \
        not OLD_NAME_IN_CODE.search("import kdsweep.sweeps.trial") and not OLD_NAME_IN_CODE.search("the sweeps")
    bad = []
    for folder in FOLDERS + ("tests", "benchmarks"):
        for f in (ROOT / folder).rglob("*.py"):
            if f == Path(__file__).resolve():  # its own examples above
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and OLD_NAME_IN_CODE.search(node.value):
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.value[:80]!r}")
    assert bad == []


def test_layers_import_downwards_only():
    bad = []
    for mod, names in module_imports().items():
        top = layer(mod)
        for n in names:
            if layer(n) in FORBIDDEN.get(top, ()):
                bad.append(f"{mod} imports {n}")
    assert bad == []


# distill's parts, lowest first (docs/layout.md): each imports only itself and the parts before it.
DISTILL_PARTS = ("errors", "files", "runtime", "seeding", "optim", "models", "data", "config", "inputs",
                 "loss", "eval", "teacher", "run")


def distill_part(module: str) -> str | None:
    """kdsweep.distill.data.splits -> 'data'; kdsweep.distill.config -> 'config'; the package itself and
    anything outside distill -> None."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["kdsweep", "distill"] and len(parts) > 2 else None


def test_distill_part_names():
    assert [distill_part(m) for m in ("kdsweep.distill.data.splits", "kdsweep.distill.config", "kdsweep.distill",
                                      "kdsweep.sweeps.cache", "torch")] == ["data", "config", None, None, None]


def test_distill_parts_import_downwards_only():
    graph = internal_graph(module_imports())
    found = {distill_part(m) for m in graph} - {None}
    assert found == set(DISTILL_PARTS), \
        f"distill's parts changed: add {sorted(found - set(DISTILL_PARTS))} to DISTILL_PARTS and docs/layout.md"
    bad = []
    for mod, edges in graph.items():
        if (mine := distill_part(mod)) is None:
            continue
        for other in edges:
            theirs = distill_part(other)
            if theirs is not None and DISTILL_PARTS.index(theirs) > DISTILL_PARTS.index(mine):
                bad.append(f"{mod} ({mine}) imports {other} ({theirs})")
    assert bad == []


def test_reading_a_sweep_imports_no_ray(tmp_path):
    sd = write_finished_sweep(tmp_path / "store")
    script = f"""
import json, sys
from kdsweep.cli import main
store = {str(sd.root.parent)!r}
codes = [main(["sweep", "status", "norays", "--storage", store, "--json"]),
         main(["sweep", "export", "norays", "--storage", store, "--out", {str(tmp_path / "best")!r}]),
         main(["sweep", "list", "--storage", store]),
         main(["analyze", "norays", "--storage", store])]
print(json.dumps({{"codes": codes, "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))}}))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 0, 0]
    assert result["ray"] == []
    assert (tmp_path / "best" / "demo-xs__baseline.yaml").is_file()
    assert (sd.analysis / "index.html").is_file()


def test_a_moved_sweep_folder_reads_its_own_database(tmp_path):
    sd = write_finished_sweep(tmp_path / "a")
    moved = SweepDir(tmp_path / "b" / "norays")
    moved.root.parent.mkdir()
    sd.root.rename(moved.root)
    assert moved.storage_url() == f"sqlite:///{moved.default_db}"
    trials = open_study(moved.storage_url(), "norays", "demo-xs/baseline").get_trials()
    assert [t.value for t in trials] == [19.5, None]


# The keys of a training report row that say how its run stands: only `TrainReport` (distill/run/rundir.py) reads them.
REPORT_STATE_KEYS = ("done_training", "diverged")
REPORT_MODULE = ROOT / "distill" / "run" / "rundir.py"


def state_key_reads(source: str) -> list[int]:
    """Lines of `source` that read a report row's state by its key: `row["diverged"]`, `row.get("diverged")`,
    `"diverged" in row` (a key written into a dict literal, or a column named so, is no read)."""
    def key(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in REPORT_STATE_KEYS

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and key(node.slice) and not isinstance(node.ctx, ast.Store):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop")
              and node.args and key(node.args[0])):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and key(node.left) and any(isinstance(o, (ast.In, ast.NotIn))
                                                                      for o in node.ops):
            lines.append(node.lineno)
    return lines


def test_the_state_key_finder_finds_each_way_of_reading_a_key():
    src = ('a = r["diverged"]\nb = r.get("done_training")\nc = "diverged" in r\n'
           'd = {"diverged": 1}\nr["done_training"] = 1\n')
    assert state_key_reads(src) == [1, 2, 3]


def test_only_train_report_reads_a_report_rows_state():
    from kdsweep.distill.run.rundir import TrainReport

    assert set(REPORT_STATE_KEYS) <= set(TrainReport.__dataclass_fields__)
    assert state_key_reads(REPORT_MODULE.read_text()) != []  # it is the one that does
    bad = [f"{f.relative_to(ROOT)}:{line}" for folder in FOLDERS for f in sorted((ROOT / folder).rglob("*.py"))
           if f != REPORT_MODULE for line in state_key_reads(f.read_text())]
    assert bad == []
