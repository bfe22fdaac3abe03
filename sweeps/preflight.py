"""Everything a sweep needs, checked in the driver before any work starts.

Without these checks a missing data file or a `block_size` the teacher cannot
take fails inside every trial (tracebacks, then a sweep folder marked finished
under the name), and a trial no node can hold waits forever (Tune only warns,
every 60 s, and only about CPU/GPU totals).

* `check_inputs_of_space`, before Ray starts: the storage folder (and the teacher
  cache's folder, when the space uses one) is writable, and for each scale the trial config
  builds and its teacher (config and weights' headers), tokenizer (by content), sizes, memory
  (on this machine, for a local sweep) and data pass `distill.inputs.check_inputs` (the data
  is read and split once; trials reuse the on-disk cache).
* `asha_warnings`: ASHA settings under which it can never stop a trial (printed, not refused:
  the sweep is valid, only its early stopping is idle).
* `check_resources`, after `ray.init` and before Tune: every bundle a trial
  holds fits on one node. On an autoscaling cluster the node *types* are what
  count, and what will be requested is printed instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from kdsweep.distill.data.exposure import check_teacher_train_data
from kdsweep.distill.errors import ConfigError
from kdsweep.distill.inputs import check_inputs, check_writable_dir
from kdsweep.distill.run.train import accumulation_steps, total_steps
from kdsweep.sweeps.cache import check_cache_dir
from kdsweep.sweeps.space import Dist, SearchSpace, Study
from kdsweep.sweeps.trial import trial_bundles

# `ray up` leaves the cluster's node types here on the head node (Tune uses the same file to
# tell an autoscaling cluster apart); Ray has no public API that says "this cluster can grow".
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


def _probe(d: Dist):
    """A value inside the distribution: enough to build a valid trial config."""
    if d.type == "choice":
        return d.values[0]
    return int(d.low) if d.type == "int" else d.low


def check_inputs_of_space(space: SearchSpace, storage: Path, *, final_eval: bool = False,
                          check_memory: bool = True) -> None:
    """Raise a one-line error for any input that would fail the sweep's trials; writes nothing.

    `final_eval=True` checks the configs replicate trials run (they score the test split);
    `check_memory=False` for a sweep joining a cluster, whose nodes hold the trials."""
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
        check_inputs(cfg, check_memory=check_memory)
        accumulation_steps(cfg, space.resources["workers"])


def _probe_config(space: SearchSpace, study: Study, storage: Path, final_eval: bool):
    params = {k: _probe(d) for k, d in study.params.items()}
    extra = {"final_eval": True} if final_eval else {}
    return space.trial_config(study, params, str(storage / "preflight-not-written"), **extra)


TUNER_STATE, EXPERIMENT_STATE = "tuner.pkl", "experiment_state-*.json"


def check_tune_state(tune_dir: Path) -> None:
    """Before a resume starts Ray: Tune's saved experiment is there and readable (its newest
    experiment snapshot parses, its tuner is not empty); else a ConfigError naming the file.
    (The tuner itself is a pickle only Tune reads: docs/reliability.md, trusted input.)"""
    tuner = tune_dir / TUNER_STATE
    if not tuner.is_file() or tuner.stat().st_size == 0:
        raise ConfigError(f"{tuner}: Tune's saved experiment is {'empty' if tuner.is_file() else 'missing'}; "
                          "this sweep cannot be resumed (restore the sweep folder from a copy)")
    snapshots = sorted(tune_dir.glob(EXPERIMENT_STATE), key=lambda f: f.stat().st_mtime)
    if not snapshots:
        raise ConfigError(f"{tune_dir}: no Tune experiment snapshot ({EXPERIMENT_STATE}); this sweep cannot be "
                          "resumed (restore the sweep folder from a copy)")
    try:
        state = json.loads(snapshots[-1].read_bytes())
    except ValueError as e:
        raise ConfigError(f"{snapshots[-1]}: Tune's experiment snapshot is damaged ({str(e)[:200]}); restore the "
                          "sweep folder from a copy") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{snapshots[-1]}: Tune's experiment snapshot is damaged (not a JSON object)")


def asha_warnings(space: SearchSpace) -> list[str]:
    """Why ASHA can never stop a trial of this space early, if it cannot (empty list when it can)."""
    if not space.search["early_stopping"]:
        return []
    cfg = space.trial_config(space.studies[0], {}, "unused")
    steps, grace = total_steps(cfg), space.search["grace_period"]
    out = []
    if grace >= steps:
        out.append(f"search.grace_period {grace} >= the {steps} training steps of a trial: ASHA can never stop a "
                   "trial early; lower grace_period, or set search.early_stopping: false")
    if cfg.eval_interval >= steps:
        out.append(f"train.eval_interval {cfg.eval_interval} >= the {steps} training steps of a trial: trials "
                   "report once, at their end, so ASHA can never stop one early")
    if space.search["trials_per_study"] == 1:
        out.append("search.trials_per_study 1: ASHA compares the trials of one study, so with one it never stops "
                   "a trial early")
    return out + warmup_rung_warnings(space)


def warmup_rung_warnings(space: SearchSpace) -> list[str]:
    """ASHA's first rung at or before the end of the largest warmup searched (method §6): a trial is
    judged before it ever trained at its full learning rate, which favours configs with short warmups
    (fast starters) over ones that would overtake them later. Legal, so warned, not refused."""
    out = []
    warm = [(s.name, d.high) for s in space.studies if (d := s.params.get("warmup_steps")) and d.type != "choice"]
    warm += [(s.name, max(d.values)) for s in space.studies if (d := s.params.get("warmup_steps")) and d.type == "choice"]
    if warm and space.search["early_stopping"]:
        study, largest = max(warm, key=lambda w: w[1])
        rung = space.search["grace_period"]
        if rung <= largest:
            out.append(f"search.grace_period: ASHA's first rung (step {rung}) falls at or before the end of the "
                       f"largest warmup searched ({study}: warmup_steps up to {largest:g}): a trial can be judged "
                       "before it trained at its full learning rate, which favours short warmups; raise "
                       f"grace_period above {largest:g} or narrow the warmup range.")
    return out


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
