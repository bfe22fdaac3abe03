"""Everything a sweep needs, checked in the driver before any work starts.

Without these checks a missing data file or a `block_size` the teacher cannot
take fails inside every trial (tracebacks, then a sweep folder marked finished
under the name), and a trial no node can hold waits forever (Tune only warns,
every 60 s, and only about CPU/GPU totals).

* `check_inputs_of_space`, before Ray starts: the storage folder (and the teacher
  cache's folder, when the space uses one) is writable, and for each scale the trial config builds and its tokenizer, teacher config,
  vocabularies, sizes and data pass `distill.inputs.check_inputs` (the data is
  read and split once; trials reuse the on-disk cache).
* `check_resources`, after `ray.init` and before Tune: every bundle a trial
  holds fits on one node. On an autoscaling cluster the node *types* are what
  count, and what will be requested is printed instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from distill.errors import ConfigError
from distill.exposure import check_teacher_train_data
from distill.inputs import check_inputs, check_writable_dir
from distill.train import accumulation_steps
from sweeps.cache import check_cache_dir
from sweeps.space import Dist, SearchSpace, Study
from sweeps.trial import trial_bundles

# `ray up` leaves the cluster's node types here on the head node (Tune uses the same file to
# tell an autoscaling cluster apart); Ray has no public API that says "this cluster can grow".
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


def _probe(d: Dist):
    """A value inside the distribution: enough to build a valid trial config."""
    if d.type == "choice":
        return d.values[0]
    return int(d.low) if d.type == "int" else d.low


def check_inputs_of_space(space: SearchSpace, storage: Path, *, final_eval: bool = False) -> None:
    """Raise a one-line error for any input that would fail the sweep's trials; writes nothing.

    `final_eval=True` checks the configs replicate trials run (they score the test split)."""
    check_writable_dir(storage, "--storage")
    if space.teacher_train_data:
        check_teacher_train_data(space.teacher_train_data)
    if space.cache["enabled"]:
        check_cache_dir(space, storage)
    checked = set()
    for study in space.studies:
        if study.scale in checked:
            continue  # arms differ only in loss settings; sizes differ per scale
        checked.add(study.scale)
        cfg = _probe_config(space, study, storage, final_eval)
        check_inputs(cfg)
        accumulation_steps(cfg, space.resources["workers"])


def _probe_config(space: SearchSpace, study: Study, storage: Path, final_eval: bool):
    params = {k: _probe(d) for k, d in study.params.items()}
    extra = {"final_eval": True} if final_eval else {}
    return space.trial_config(study, params, str(storage / "preflight-not-written"), **extra)


# ---- resources -------------------------------------------------------------------------------


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items())


def resource_plan(bundles: list[tuple[str, dict]], nodes: list[dict], node_types: dict[str, dict] | None
                  ) -> list[str]:
    """Lines saying what an autoscaling cluster will be asked for; raises when no node (type) can hold
    a bundle. `nodes` are the alive nodes' resources; `node_types` is None on a fixed cluster."""
    notes = []
    for what, bundle in bundles:
        if any(_fits(bundle, n) for n in nodes):
            continue
        if node_types is not None:
            fitting = [name for name, res in node_types.items() if _fits(bundle, res)]
            if fitting:
                notes.append(f"no node can hold a {what} ({_fmt(bundle)}) yet: the autoscaler will be asked "
                             f"for a node of type {' or '.join(fitting)}")
                continue
            raise ConfigError(f"resources: each {what} needs {_fmt(bundle)}, but no node type of this "
                              f"autoscaling cluster offers that: " + "; ".join(
                                  f"{name}: {_fmt(res)}" for name, res in node_types.items()))
        raise ConfigError(f"resources: each {what} needs {_fmt(bundle)}, but no node of this Ray cluster "
                          f"has that much; its nodes: {_nodes(nodes)}. Lower resources.cpus_per_worker / "
                          "gpus_per_worker, or join a bigger cluster with --address")
    if node_types is None:
        total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
        need = {k: sum(b.get(k, 0.0) for _, b in bundles) for k in ("CPU", "GPU")}
        if not all(total[k] >= need[k] for k in need):
            raise ConfigError(f"resources: one trial needs {_fmt(need)} at once ({len(bundles)} bundles), but the "
                              f"whole cluster has {_fmt(total)}; its nodes: {_nodes(nodes)}")
    return notes


def _fmt(res: dict) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in res.items() if k in ("CPU", "GPU") or v) or "nothing"


def _nodes(nodes: list[dict]) -> str:
    return "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes) or "none alive"


def autoscaler_node_types() -> dict[str, dict] | None:
    """{node type: resources} of an autoscaling cluster launched by `ray up`, else None."""
    path = BOOTSTRAP_CONFIG.expanduser()
    if not path.is_file():
        return None
    # `ray up` writes it as JSON (a subset of YAML) with each type's CPU/GPU filled in.
    types = json.loads(path.read_text()).get("available_node_types") or {}
    return {name: {k: float(v) for k, v in (spec.get("resources") or {}).items()} for name, spec in types.items()}


def check_resources(space: SearchSpace, log: Callable[[str], None]) -> None:
    """After `ray.init`: every bundle of a trial fits on some node (or node type), else a ConfigError
    listing the cluster's nodes."""
    import ray

    nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n["Alive"]]
    for line in resource_plan(trial_bundles(space), nodes, autoscaler_node_types()):
        log(line)
