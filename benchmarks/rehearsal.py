"""A sweep rehearsed at real artefact sizes: what each trial pays besides its steps, and `estimate`'s bill beside it.

    nice -n 5 python benchmarks/rehearsal.py --work /tmp/kdsweep-rehearsal      # the defaults below: ~4.3 GB
    python benchmarks/rehearsal.py --work /tmp/r --keep ...                     # keep the artefacts

What runs, each through kdsweep's real command line in a subprocess, in order:

1. a teacher with ProtGPT2's config (vocabulary 50,257, 1024 positions, its tokenizer), width
   `--teacher-width` (1280, ProtGPT2's), `--teacher-layers` transformer blocks, random weights
   (`distill.models.save_protgpt2_shaped`: nothing is downloaded);
2. `kdsweep estimate SPACE --json`: the bill, before anything is built;
3. `kdsweep cache build SPACE`: the teacher cache in `--cache-dtype` (bf16), timed;
4. the build's own record of what it verified is forgotten (`--verify-in-sweep`, the default), so
   that the sweep verifies the cache once on its node as on a node that did not build it;
5. `kdsweep sweep run SPACE`: `--trials-per-study` trials of each arm of the `micro` student, ASHA,
   the default executor, one trial at a time (`cpus_per_worker` = this machine's cores), timed.

Then per trial, from its run folder (distill/run/train.py writes these): the time to its first step
(in its process, and since the previous trial ended), bytes hashed, bytes read from the cache,
checkpoint bytes written (and left on disk: a trial ASHA stopped keeps its weights only), steady
tokens/s; per sweep: build time, total wall, and the estimate beside each. `--json` writes it all.

Why the teacher is shallower than ProtGPT2 (`--teacher-layers 0` by default): a cache's size and
layout depend only on the teacher's width, vocabulary and the tokens stored, and a trial that reads
a cache never runs the teacher. So a 1280-wide teacher of any depth builds artefacts of the same
size, and its trials pay exactly what ProtGPT2's would; only the build's time differs, which this
script projects for 36 layers from a short forward of ProtGPT2's real config (`--project-36`).
The cache holds the held-out proteins of a large test fraction: what it takes to reach 4 GB while
the train pool stays what two CPU cores can train through (docs/benchmarks.md, "Rehearsal").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from kdsweep.distill.files import digests
from kdsweep.distill.files.numbers import dumps
from kdsweep.distill.models import save_protgpt2_shaped
from kdsweep.distill.run.rundir import SUMMARY_NAME, read_log
from kdsweep.distill.teacher.cache import cache_size_bytes

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"lr": {"type": "loguniform", "low": 3e-4, "high": 1e-2},
          "warmup_steps": {"type": "int", "low": 0, "high": 2},
          "temperature": {"type": "uniform", "low": 1.0, "high": 4.0},
          "alpha": {"type": "uniform", "low": 0.1, "high": 0.9}}


@dataclass
class Setup:
    """The rehearsal's teacher, data, cache and sweep (defaults: the recorded run)."""

    work: Path
    teacher_layers: int = 0
    teacher_width: int = 1280
    teacher_heads: int = 20
    data: str = "bundled"
    split_method: str = "cluster"
    split: tuple[float, float, float] = (0.45, 0.05, 0.5)
    cache_dtype: str = "bf16"
    scale: str = "micro"
    arms: tuple[str, ...] = ("baseline", "uncertainty")
    trials_per_study: int = 4
    steps: int = 24
    batch_size: int = 2
    block_size: int = 512
    eval_interval: int = 4
    grace_period: int = 4
    reduction_factor: int = 2
    val_max_proteins: int = 32
    cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    verify_in_sweep: bool = True

    @property
    def store(self) -> Path:
        return self.work / "store"

    @property
    def space_path(self) -> Path:
        return self.work / "rehearsal.yaml"


def write_space(setup: Setup, teacher: Path) -> Path:
    space = {
        "name": "rehearsal", "teacher": str(teacher), "data": setup.data, "scales": [setup.scale],
        "arms": list(setup.arms), "params": PARAMS,
        "cache": {"enabled": True, "dtype": setup.cache_dtype},
        "train": {"max_steps": setup.steps, "batch_size": setup.batch_size, "micro_batch_size": setup.batch_size,
                  "block_size": setup.block_size, "eval_interval": setup.eval_interval,
                  "val_max_proteins": setup.val_max_proteins, "eval_batch_size": 8, "precision": "fp32",
                  "split_method": setup.split_method, "split": list(setup.split), "final_eval": False},
        "search": {"trials_per_study": setup.trials_per_study, "max_concurrent": 1, "seed": 0,
                   "grace_period": setup.grace_period, "reduction_factor": setup.reduction_factor},
        "resources": {"workers": 1, "cpus_per_worker": setup.cpus},
    }
    setup.space_path.write_text(yaml.safe_dump(space, sort_keys=False))
    return setup.space_path


def kdsweep(args: list[str], env: dict) -> tuple[float, str]:
    """`kdsweep ARGS` in a subprocess: (wall seconds, stdout). It must succeed."""
    started = time.time()
    p = subprocess.run([sys.executable, "-m", "kdsweep", *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise RuntimeError(f"kdsweep {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return time.time() - started, p.stdout + p.stderr


def forget_verification(folder: Path, env: dict) -> int:
    """Remove the digest records of the files under `folder` from the node's memo (distill/files/digests.py),
    as on a node that did not build them. Returns how many were removed."""
    memo_path = Path(env["KDSWEEP_CACHE"]) / digests.MEMO_NAME
    memo = json.loads(memo_path.read_text())
    prefix = os.path.realpath(folder) + os.sep
    kept = {k: v for k, v in memo.items() if not k.startswith(prefix)}
    memo_path.write_text(json.dumps(kept))
    return len(memo) - len(kept)


def trial_figures(run: Path) -> dict:
    """What one trial paid, from its run log (distill/run/train.py's rows and events)."""
    log = read_log(run)
    events = {}
    for row in log:
        events.setdefault(row.get("event"), []).append(row)
    rows = events.get(None, [])
    last = rows[-1] if rows else {}
    ckpt_dir = run / "checkpoints"
    summary = json.loads((run / SUMMARY_NAME).read_text()) if (run / SUMMARY_NAME).is_file() else {}
    return {
        "trial": run.name, "status": summary.get("status"), "steps": last.get("step"),
        "started_at": events["node"][0]["time"], "first_step_at": events["first_step"][0]["time"],
        "ended_at": events["checkpoint"][-1]["time"],
        "first_step_s": events["first_step"][0]["seconds"],
        "bytes_hashed": last.get("bytes_hashed"), "cache_bytes_read": last.get("cache_bytes_read"),
        "checkpoint_bytes_written": sum(e["bytes"] for e in events["checkpoint"]),
        "checkpoint_bytes_left": sum(f.stat().st_size for f in ckpt_dir.rglob("*") if f.is_file()),
        "steady_tokens_per_s": last.get("steady_tokens_per_s"), "reports": len(rows),
    }


def projected_build(setup: Setup, cache_tokens: dict) -> dict:
    """Tokens/s here of ProtGPT2's real depth (36 x 1280, random weights, its config) and of the rehearsal's
    teacher, each building a cache's train blocks (forward + entropies) and held-out proteins (forward):
    the build time the rehearsal's cache would take with ProtGPT2's depth."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdsweep.distill.models import PROTGPT2_TOKENIZER_DIR
    from kdsweep.distill.run.probe import HeldTeacher, random_tokens
    from kdsweep.distill.runtime import resolve_runtime
    from kdsweep.distill.teacher.source import LiveTeacher
    from kdsweep.sweeps.estimate import tokens_per_s

    rt = resolve_runtime("fp32", "cpu")
    torch.set_num_threads(setup.cpus)
    out = {}
    for name, layers in (("rehearsal teacher", setup.teacher_layers), ("ProtGPT2 depth", 36)):
        config = AutoConfig.from_pretrained(PROTGPT2_TOKENIZER_DIR)
        config.update({"n_layer": layers, "n_head": setup.teacher_heads, "n_embd": setup.teacher_width})
        torch.manual_seed(0)
        teacher = LiveTeacher(AutoModelForCausalLM.from_config(config).eval().requires_grad_(False), name)
        x = random_tokens(1, 128, config.vocab_size, rt.device)
        forward, entropy = (tokens_per_s(lambda: HeldTeacher(teacher, x, rt, entropy=e), x.numel(), rt.device)
                            for e in (False, True))
        out[name] = {"forward_tokens_per_s": forward, "entropy_tokens_per_s": entropy,
                     "build_s": cache_tokens["pool"] / entropy + cache_tokens["heldout"] / forward}
        del teacher
    return out


def rehearse(setup: Setup, env: dict, *, project_36: bool = True, log=print) -> dict:
    setup.work.mkdir(parents=True, exist_ok=True)
    env = {**env, "KDSWEEP_CACHE": env.get("KDSWEEP_CACHE") or str(setup.work / "kdsweep-cache")}
    report: dict = {"setup": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(setup).items()},
                    "load_average_start": os.getloadavg(), "nproc": os.cpu_count()}
    teacher = save_protgpt2_shaped(setup.work / "teacher", n_layer=setup.teacher_layers, n_head=setup.teacher_heads,
                                   n_embd=setup.teacher_width)
    space = write_space(setup, teacher)
    storage = ["--storage", str(setup.store)]

    wall, out = kdsweep(["estimate", str(space), *storage, "--json"], env)
    est = json.loads(out[out.index("{"):])
    report["estimate"] = {"seconds": wall, "cache_build_s": est["cache_build_s"], "wall_s_cached": est["wall_s_cached"],
                          "startup_s": est["startup_s"], "verify_s": est["verify_s"], "cache_bytes": est["cache_bytes"],
                          "device_s_cached": est["device_s_cached"], "trial_steps": sum(s["trial_steps"] for s in est["scales"]),
                          "cache_tokens": est["cache_tokens"], "cache_pool_tokens": est["cache_pool_tokens"]}
    log(f"estimate: build {est['cache_build_s']:.0f} s, sweep wall {est['wall_s_cached'] - est['cache_build_s']:.0f} s "
        f"after it ({wall:.0f} s to estimate)")

    wall, out = kdsweep(["cache", "build", str(space), *storage], env)
    folder = Path(next(line.split("teacher cache: ", 1)[1] for line in out.splitlines()
                       if line.startswith("teacher cache: /")))
    report["build"] = {"seconds": wall, "folder": str(folder), "bytes": cache_size_bytes(folder),
                       "files": len(list(folder.iterdir()))}
    log(f"cache build: {wall:.0f} s, {cache_size_bytes(folder) / 1e9:.2f} GB in {folder}")
    if setup.verify_in_sweep:
        report["build"]["records_forgotten"] = forget_verification(folder, env)

    started = time.time()
    wall, out = kdsweep(["sweep", "run", str(space), *storage], env)
    verified = [line for line in out.splitlines() if "teacher cache: verified on" in line]
    report["sweep"] = {"seconds": wall, "started_at": started, "verification": verified[0] if verified else None}
    runs = sorted((trial_figures(r) for r in (setup.store / "rehearsal" / "runs").iterdir()),
                  key=lambda t: t["started_at"])
    previous_end = started
    for t in runs:
        t["since_previous_end_s"] = t["first_step_at"] - previous_end
        previous_end = t["ended_at"]
    report["trials"] = runs
    report["load_average_end"] = os.getloadavg()
    if project_36:
        report["projection"] = projected_build(setup, {"pool": est["cache_pool_tokens"],
                                                       "heldout": est["cache_tokens"] - est["cache_pool_tokens"]})
    return report


def format_report(r: dict) -> str:
    b, s, e = r["build"], r["sweep"], r["estimate"]
    lines = [f"machine: {r['nproc']} cores; load average {' '.join(f'{x:.1f}' for x in r['load_average_start'])} at "
             f"start, {' '.join(f'{x:.1f}' for x in r['load_average_end'])} at end",
             f"teacher cache: {b['bytes'] / 1e9:.2f} GB in {b['files']} files ({e['cache_tokens']:,} tokens, of which the "
             f"train pool {e['cache_pool_tokens']:,}), built by `kdsweep cache build` in {b['seconds']:.0f} s",
             f"sweep verification: {s['verification']}",
             "per trial (in start order; 'since prev.' = from the previous trial's last report, the first from the "
             "sweep command's start):",
             f"{'trial':<12}{'status':<15}{'steps':>6}{'1st step s':>11}{'since prev.':>12}{'hashed B':>10}"
             f"{'cache read MB':>14}{'ckpt MB':>9}{'ckpt left MB':>13}{'steady tok/s':>13}"]
    for t in r["trials"]:
        lines.append(f"{t['trial']:<12}{t['status'] or '-':<15}{t['steps']:>6}{t['first_step_s']:>11.1f}"
                     f"{t['since_previous_end_s']:>12.1f}{t['bytes_hashed']:>10,}{t['cache_bytes_read'] / 1e6:>14.1f}"
                     f"{t['checkpoint_bytes_written'] / 1e6:>9.1f}{t['checkpoint_bytes_left'] / 1e6:>13.1f}"
                     f"{t['steady_tokens_per_s'] or 0:>13.0f}")
    real_total = b["seconds"] + s["seconds"]
    lines += [f"{'':<28}{'estimate':>12}{'real':>12}{'real / estimate':>17}",
              f"{'cache build':<28}{e['cache_build_s']:>11.0f}s{b['seconds']:>11.0f}s{b['seconds'] / e['cache_build_s']:>16.2f}x",
              f"{'sweep (after the build)':<28}{e['wall_s_cached'] - e['cache_build_s']:>11.0f}s{s['seconds']:>11.0f}s"
              f"{s['seconds'] / (e['wall_s_cached'] - e['cache_build_s']):>16.2f}x",
              f"{'build + sweep':<28}{e['wall_s_cached']:>11.0f}s{real_total:>11.0f}s{real_total / e['wall_s_cached']:>16.2f}x",
              f"trial-steps: estimate {e['trial_steps']:.0f}, real {sum(t['steps'] or 0 for t in r['trials'])}"]
    for name, p in r.get("projection", {}).items():
        lines.append(f"build of this cache with the {name}: forward {p['forward_tokens_per_s']:,.0f} tok/s, with "
                     f"entropies {p['entropy_tokens_per_s']:,.0f} tok/s -> {p['build_s'] / 3600:,.2f} h")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for every artefact (default: a new one in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the artefacts (default: deleted after the report)")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("--no-project-36", dest="project_36", action="store_false",
                    help="skip the projection of the build time at ProtGPT2's 36 layers")
    defaults = Setup(Path("."))
    for name in ("teacher_layers", "teacher_width", "teacher_heads", "trials_per_study", "steps", "batch_size",
                 "eval_interval", "grace_period", "val_max_proteins"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    ap.add_argument("--split", default=",".join(map(str, defaults.split)), help="train,val,test fractions")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kdsweep-rehearsal-"))
    setup = Setup(work, split=tuple(float(x) for x in args.split.split(",")),
                  **{k: getattr(args, k) for k in ("teacher_layers", "teacher_width", "teacher_heads",
                                                   "trials_per_study", "steps", "batch_size", "eval_interval",
                                                   "grace_period", "val_max_proteins")})
    ray_tmp = tempfile.mkdtemp(prefix="kdr", dir="/tmp")  # Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    try:
        report = rehearse(setup, env, project_36=args.project_36)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(format_report(report))
    if args.json:
        args.json.write_text(dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
