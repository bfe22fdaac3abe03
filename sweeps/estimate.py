"""`kdsweep estimate SPACE`: what a sweep will cost, before launching it. Starts no sweep.

Per scale (every arm of a scale costs the same to within its loss options):

* trials = arms x `search.trials_per_study`; steps per trial T = `distill.run.train.total_steps`
  (from `max_tokens` or `max_steps`); tokens per trial = T x batch_size x block_size;
* trial-steps after ASHA: `sweeps.asha_model` (the expected steps of a study's trials under
  Ray's ASHA rule; its assumptions are stated there), or every trial's full T with
  `search.early_stopping: false`;
* tokens/s of a training step, split in two because a teacher cache removes one part:
  the student's step with the teacher's hidden states given (``s``) and the teacher's
  forward (``t``); a live-teacher step runs at ``1 / (1/s + 1/t)``. Both come from a short
  probe on this device (`distill.run.probe`: the models built from their configs with random
  weights, no download, random tokens, a trial's CPU threads), or from a figure the user
  passes (`--tokens-per-s`, the live step's tokens/s), split by FLOPs: the teacher's share
  of a live step is 2 N_t / (2 N_t + 6 N_s) (N = parameters that multiply every token);
* validation: every report scores `val_max_proteins` proteins (their real token lengths
  from the data, capped like the trials cap them) at the probed student-forward tokens/s;
* what a trial pays besides its steps (docs/benchmarks.md, "Per-trial fixed cost" and
  "Rehearsal", where each part was measured): its set-up as this process times it now
  (tokenized data from the cache); a fresh process importing the trial's code (Ray, torch,
  transformers), timed now, once per trial, or once per concurrent slot where trials reuse
  their process (`local` executor: `sweeps.space.reuses_processes`); Tune's own work per
  trial and per report, and the `ray_train` executor's start of Train's controller and
  workers (constants measured by benchmarks/trial_overhead.py); per report, the validation
  and one checkpoint (weights + AdamW moments, 12 bytes a parameter) at the write speed of
  the sweep storage, timed now. Verifying the teacher cache is once per sweep and node at
  this machine's SHA-256 speed, timed now (trials then hash nothing: distill/files/digests.py);
  once per sweep also Ray's start and the driver's imports;
* teacher cache: the blocks a trial reads (every trial of a sweep reads the same blocks in the
  same order: they share the data seed), so min(T x batch_size, train blocks) x block_size
  tokens, and every val/test protein's tokens, each d_t values in `cache.dtype` (+ fp32
  entropies and head: `distill.teacher.cache.cache_sizes`, what a build writes); built once
  at the teacher's forward tokens/s.

Device-hours are hours of the probed device as one trial uses it: one whole GPU, or on a CPU
one trial's `cpus_per_worker` cores. Wall-clock hours divide them by the trials that run at
once here (`max_concurrent`, capped by the cores or GPUs available).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.data.batches import prepare_data
from kdsweep.distill.data.block_order import pool_size
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import ConfigError
from kdsweep.distill.loss.kd import KDOptions
from kdsweep.distill.models import (
    PROTGPT2_TOKENIZER_DIR,
    build_student,
    load_tokenizer,
    n_positions,
    resolve_teacher,
    student_sizes,
)
from kdsweep.distill.run.probe import HeldTeacher, forward_flops_per_token, random_tokens, train_flops_per_token
from kdsweep.distill.run.step import LossSettings, Stepper
from kdsweep.distill.run.train import total_steps
from kdsweep.distill.runtime import resolve_runtime
from kdsweep.distill.teacher.cache import cache_sizes, heldout_tokens
from kdsweep.distill.teacher.source import LiveTeacher
from kdsweep.sweeps.asha_model import AshaExpectation, expected_asha_steps, report_steps, without_early_stopping
from kdsweep.sweeps.layout import storage_root
from kdsweep.sweeps.space import SearchSpace, reuses_processes

# Hub teachers whose config and tokenizer ship with kdsweep: estimated without a download.
SHIPPED_TEACHERS = {"nferruz/ProtGPT2": PROTGPT2_TOKENIZER_DIR}
# Seconds Tune and the executors add, measured on a 2-core CPU by benchmarks/trial_overhead.py
# (docs/benchmarks.md, "Per-trial fixed cost"): Tune's work per trial (scheduling, starting or
# resetting its process, the last result) and per report (a trial waits while the driver
# processes each result), and a `ray_train` trial's start of Train's controller and worker group.
TUNE_TRIAL_S = 1.0
TUNE_REPORT_S = 0.1
EXECUTOR_EXTRA_S = {"local": 0.0, "ray_train": 10.0}
# Once per sweep: an embedded Ray's start and Tune's set-up (the same benchmark).
RAY_START_S = 10.0
# The import a trial's fresh worker process pays before it trains (timed in a subprocess).
TRIAL_IMPORTS = "import kdsweep.sweeps.trial, kdsweep.distill.run.train"
# Bytes of a checkpoint per student parameter: fp32 weights and AdamW's two fp32 moments.
CHECKPOINT_BYTES_PER_PARAM = 12
# Bytes hashed and written to time SHA-256 and the storage's write speed.
PROBE_IO_BYTES = 64 * 2**20
# A CPU probe call is sized to about this many model FLOPs (a few seconds on 2 cores), so
# that even ProtGPT2 probes in well under a minute; on CUDA the trial's own micro-batch is probed.
CPU_PROBE_FLOPS = 5e10
MIN_PROBE_LENGTH = 64
# A probe call longer than this is measured once (its warm-up share is small); shorter ones
# get a warm-up call and the median of two more.
LONG_CALL_S = 2.0


@dataclass(frozen=True)
class Throughput:
    """Tokens per second of one scale on the probed device."""

    student_step: float  # a training step with the teacher's hidden states given (cached teacher)
    teacher: float  # the teacher's forward (+ entropies when an arm needs them): a live step's teacher part
    eval_forward: float  # the student's forward for validation
    source: str
    # A cache build: train blocks get the forward and the entropies, held-out proteins the forward only.
    build_train: float = 0.0
    build_heldout: float = 0.0

    @property
    def live_step(self) -> float:
        return 1.0 / (1.0 / self.student_step + 1.0 / self.teacher)


@dataclass(frozen=True)
class Machine:
    """What this machine's trials pay besides their steps, timed now (see the module docstring)."""

    process_s: float  # a fresh process importing a trial's code
    setup_s: float  # a trial's set-up before its first step (tokenizer, tokenized data)
    sha256_bytes_per_s: float
    write_bytes_per_s: float  # the sweep storage, fsync'd
    cores: int
    gpu: bool


@dataclass
class ScaleEstimate:
    scale: str
    trials: int
    steps_per_trial: int
    tokens_per_trial: int
    asha: AshaExpectation  # per study
    studies: int
    throughput: Throughput
    eval_tokens_per_report: int
    checkpoint_bytes: int  # one checkpoint (per report)
    overhead_s_per_trial: float  # start-up and Tune's per-trial work (not the per-report part)
    report_s: float  # per report besides validation's compute: the checkpoint write and Tune's processing
    reports: float = 0.0
    trial_steps: float = 0.0
    train_tokens: float = 0.0
    device_s_live: float = 0.0
    device_s_cached: float = 0.0
    checkpoint_bytes_per_trial: int = 0  # a full-budget trial's checkpoints (one per report)


@dataclass
class Estimate:
    space: str
    device: str
    concurrency: float
    scales: list[ScaleEstimate]
    cache_tokens: int  # the train pool's and the held-out proteins'
    cache_pool_tokens: int  # the train pool's
    cache_bytes: int
    cache_dtype: str
    cache_build_s: float
    early_stopping: bool
    startup_s: float  # once per sweep: Ray's start, the driver's imports (wall clock, not device time)
    verify_s: float  # once per sweep and node, in parallel: SHA-256 of the teacher cache (wall clock)
    machine: Machine
    trial_start_up: tuple[tuple[str, float], ...]  # (part, seconds) that every scale's overhead_s_per_trial adds up
    reuses_processes: bool  # a trial's process runs the next trial: its start is paid once per slot
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def device_s_live(self) -> float:
        return sum(s.device_s_live for s in self.scales)

    @property
    def device_s_cached(self) -> float:
        return self.cache_build_s + sum(s.device_s_cached for s in self.scales)

    def wall_s(self, cached: bool) -> float:
        """Wall clock of the whole sweep here: start-up (and the cache's verification), then the
        device time spread over the trials at once."""
        if cached:
            return self.startup_s + self.verify_s + self.device_s_cached / self.concurrency
        return self.startup_s + self.device_s_live / self.concurrency

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(device_s_live=self.device_s_live, device_s_cached=self.device_s_cached,
                   wall_s_live=self.wall_s(cached=False), wall_s_cached=self.wall_s(cached=True))
        for row, scale in zip(out["scales"], self.scales):
            row["throughput"]["live_step"] = scale.throughput.live_step
            row["asha"]["fraction"] = scale.asha.fraction
        return out


def teacher_files(teacher: str) -> str:
    """A local folder or cached hub id holding the teacher's config (and tokenizer): no download."""
    name = resolve_teacher(teacher)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in SHIPPED_TEACHERS:
        return str(SHIPPED_TEACHERS[name])
    return name  # a hub id: only its locally cached files are used (local_files_only)


def load_teacher_config(teacher: str):
    try:
        return AutoConfig.from_pretrained(teacher_files(teacher), local_files_only=True)
    except (OSError, ValueError):
        raise ConfigError(f"teacher {teacher!r}: no local config to estimate from (not a folder, and not in the "
                          "Hugging Face cache; estimate downloads nothing); point `teacher:` at a folder holding "
                          "its config.json and tokenizer") from None


def parse_tokens_per_s(values: list[str] | None, scales) -> dict[str, float]:
    """`--tokens-per-s 5000` (every scale) or `--tokens-per-s tiny=5000` (repeatable) -> {scale: figure}."""
    out: dict[str, float] = {}
    for value in values or []:
        scale, sep, figure = value.rpartition("=")
        targets = [scale] if sep else list(scales)
        if sep and scale not in scales:
            raise ConfigError(f"--tokens-per-s {value!r}: {scale!r} is not a scale of this space "
                              f"({', '.join(scales)})")
        try:
            number = float(figure)
        except ValueError:
            number = -1.0
        if not number > 0:
            raise ConfigError(f"--tokens-per-s {value!r}: expected a number > 0, or SCALE=NUMBER")
        out.update({s: number for s in targets})
    return out


def flop_split(tokens_per_s: float, student_flops: float, teacher_flops: float, eval_flops: float) -> Throughput:
    """A measured live-step figure split into student step and teacher forward by their FLOPs."""
    total = student_flops + teacher_flops
    teacher = tokens_per_s * total / teacher_flops
    return Throughput(student_step=tokens_per_s * total / student_flops, teacher=teacher,
                      build_train=teacher, build_heldout=teacher,
                      eval_forward=tokens_per_s * total / eval_flops,
                      source=f"--tokens-per-s {tokens_per_s:g}, split by FLOPs (teacher share "
                             f"{teacher_flops / total:.0%})")


def probe_shape(flops_per_token: float, micro_batch: int, block: int, device: torch.device) -> tuple[int, int]:
    """(batch, length) of a probe call: the trial's own on CUDA; on CPU about CPU_PROBE_FLOPS."""
    if device.type == "cuda":
        return micro_batch, block
    tokens = max(1, int(CPU_PROBE_FLOPS / flops_per_token))
    if tokens >= block:
        return max(1, min(micro_batch, tokens // block)), block
    return 1, min(block, max(MIN_PROBE_LENGTH, tokens))


def tokens_per_s(fn, tokens: int, device: torch.device) -> float:
    """Tokens per second of ``fn()``, which processes ``tokens`` tokens (see LONG_CALL_S)."""
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = once()
    if first >= LONG_CALL_S:
        return tokens / first
    return tokens / ((once() + once()) / 2)  # the first call (warm-up) dropped, the mean of the next two


def process_start_s() -> float:
    """Seconds a fresh Python process takes to import a trial's code, on this machine now."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", TRIAL_IMPORTS], check=True, capture_output=True)
    return time.perf_counter() - start


def sha256_bytes_per_s() -> float:
    """This machine's SHA-256 speed now (what verifying a teacher cache reads at)."""
    data = os.urandom(PROBE_IO_BYTES)
    start = time.perf_counter()
    hashlib.sha256(data).digest()
    return len(data) / (time.perf_counter() - start)


def write_bytes_per_s(folder: Path) -> float:
    """Write speed of the file system holding `folder` (or its nearest existing parent) now: a file
    written and fsync'd there, then removed (what a checkpoint costs to write)."""
    while not folder.is_dir():
        folder = folder.parent
    data = os.urandom(PROBE_IO_BYTES)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".kdsweep-write-probe-") as fh:
        start = time.perf_counter()
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
        return len(data) / (time.perf_counter() - start)


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def probe_threads(space: SearchSpace) -> int:
    """A trial's CPU threads (`cpus_per_worker`, sweeps.trial), never more than this machine's cores."""
    return max(1, min(int(float(space.resources["cpus_per_worker"])), cores()))


def _loss_settings(space: SearchSpace) -> LossSettings:
    """The costliest loss options among the space's arms (the cost differs little between arms)."""
    uncertainty = any(s.uncertainty for s in space.studies)
    return LossSettings(KDOptions(temperature=2.0, alpha=0.5, uncertainty=uncertainty,
                                  smoothing=0.1 if any(s.smooths for s in space.studies) else None,
                                  weight_norm="mask"), impl="fused")


def probe_throughput(space: SearchSpace, cfg: TrainConfig, teacher_config, rt) -> dict[str, Throughput]:
    """Time the teacher's forward once and every scale's student step and eval forward."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(teacher_config).to(rt.device).eval().requires_grad_(False)
    teacher = LiveTeacher(model, "probe")
    loss = _loss_settings(space)
    t_batch, t_len = probe_shape(forward_flops_per_token(model, cfg.block_size), cfg.micro_batch_size,
                                 cfg.block_size, rt.device)
    x = random_tokens(t_batch, t_len, teacher_config.vocab_size, rt.device)
    # The teacher's forward alone (a cache build's held-out proteins), and with the entropies (a cache
    # build's train blocks; a live step's teacher part when an arm weights by uncertainty).
    forward, entropy = (tokens_per_s(lambda: HeldTeacher(teacher, x, rt, entropy=e), x.numel(), rt.device)
                        for e in (False, True))
    teacher_tps = {"live": entropy if loss.options.uncertainty else forward, "forward": forward, "entropy": entropy}
    source = (f"probe on {rt.device.type} ({torch.get_num_threads()} threads, {rt.precision}; "
              f"teacher {t_batch} x {t_len} tokens")
    return {scale: _probe_student(scale, teacher, cfg, rt, loss, teacher_tps, source) for scale in space.scales}


def _probe_student(scale: str, teacher: LiveTeacher, cfg: TrainConfig, rt, loss: LossSettings,
                   teacher_tps: dict[str, float], source: str) -> Throughput:
    """One scale's student: its training step with the teacher's batch given, its eval forward."""
    student = build_student(teacher.config, student_sizes(scale, None, None, None), cfg.dropout, seed=0)
    student = student.to(rt.device)
    s_batch, s_len = probe_shape(train_flops_per_token(student, cfg.block_size), cfg.micro_batch_size,
                                 cfg.block_size, rt.device)
    xs = random_tokens(s_batch, s_len, teacher.config.vocab_size, rt.device)
    blocks = torch.arange(s_batch, device=rt.device)
    step = Stepper(student, HeldTeacher(teacher, xs, rt, entropy=loss.options.uncertainty), rt, loss, lr=cfg.lr)
    student_tps = tokens_per_s(lambda: step.step(blocks, xs), xs.numel(), rt.device)

    def score():
        with torch.no_grad(), rt.autocast():
            student(input_ids=xs).logits.float().log_softmax(-1)

    student.eval()
    eval_tps = tokens_per_s(score, xs.numel(), rt.device)
    return Throughput(student_tps, teacher_tps["live"], eval_tps, source=f"{source}, student {s_batch} x {s_len})",
                      build_train=teacher_tps["entropy"], build_heldout=teacher_tps["forward"])


def flops_throughput(space: SearchSpace, cfg: TrainConfig, teacher_config, figures: dict[str, float]):
    """--tokens-per-s figures split by FLOPs; the models are built on the meta device (no memory)."""
    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(teacher_config)
        out = {}
        for scale in space.scales:
            student = build_student(teacher_config, student_sizes(scale, None, None, None), cfg.dropout)
            out[scale] = flop_split(figures[scale], train_flops_per_token(student, cfg.block_size),
                                    forward_flops_per_token(teacher, cfg.block_size),
                                    forward_flops_per_token(student, cfg.block_size))
    return out


def _concurrency(space: SearchSpace, device: torch.device, devices: int | None) -> float:
    res, cap = space.resources, space.search["max_concurrent"]
    if device.type == "cuda":
        gpus = devices or torch.cuda.device_count()
        per_trial = float(res["gpus_per_worker"]) * res["workers"] or 1.0
        return min(float(gpus), cap * per_trial)
    return float(max(1, min(cap, (devices or cores()) // max(1, int(float(res["cpus_per_worker"]))))))


def measure_machine(space: SearchSpace, storage: Path, setup) -> tuple[Machine, object]:
    """Time what a trial pays besides its steps on this machine now; `setup()` is the trial's set-up
    (returns the tokenized data, which the estimate reuses)."""
    process_s = process_start_s()
    started = time.perf_counter()
    data = setup()
    setup_s = time.perf_counter() - started
    return Machine(process_s, setup_s, sha256_bytes_per_s(), write_bytes_per_s(storage), cores(),
                   torch.cuda.is_available()), data


def estimate(space: SearchSpace, *, tokens_per_s: list[str] | None = None, device: str = "auto",
             devices: int | None = None, storage: str | None = None) -> Estimate:
    """The bill of ``space`` (see the module docstring); `storage` is where the sweep will run
    (its write speed prices the checkpoints)."""
    started = time.perf_counter()
    if devices is not None and devices < 1:
        raise ConfigError(f"--devices: got {devices}, allowed: an integer >= 1")
    figures = parse_tokens_per_s(tokens_per_s, space.scales)  # bad figures fail before any work
    study = space.studies[0]
    cfg = space.trial_config(study, {}, "unused", device=device)
    rt = resolve_runtime(cfg.precision, cfg.device)
    teacher_config = load_teacher_config(space.teacher)

    def setup():  # what a trial does before training: tokenizer, cached data
        tokenizer = load_tokenizer(space.tokenizer or teacher_files(space.teacher))
        return prepare_data(space.data, tokenizer, column=cfg.sequence_column, split=SplitSpec.from_config(cfg),
                            block_size=cfg.block_size)

    machine, data = measure_machine(space, storage_root(storage), setup)
    threads = torch.get_num_threads()
    try:
        if rt.device.type == "cpu":  # a trial's threads (sweeps.trial._limit_threads), at most the cores
            torch.set_num_threads(probe_threads(space))
        if figures and set(figures) >= set(space.scales):
            throughput = flops_throughput(space, cfg, teacher_config, figures)
        else:
            throughput = probe_throughput(space, cfg, teacher_config, rt)
            if figures:
                throughput.update(flops_throughput(space, cfg, teacher_config, figures))
    finally:
        torch.set_num_threads(threads)

    steps = total_steps(cfg)
    search = space.search
    positions = n_positions(teacher_config)
    cap = cfg.max_eval_tokens or positions
    val = data.val.subset(cfg.val_max_proteins)
    eval_tokens = sum(min(len(ids), cap) for ids in val.ids)
    concurrency = _concurrency(space, rt.device, devices)
    reuse = reuses_processes(space)
    executor_s = EXECUTOR_EXTRA_S[search["executor"]]
    start_up = (("set-up", machine.setup_s), *(() if reuse else (("process start", machine.process_s),)),
                ("Tune", TUNE_TRIAL_S), *(((f"the {search['executor']} executor", executor_s),) if executor_s else ()))
    rows = []
    for scale in space.scales:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in build_student(teacher_config, student_sizes(scale, None, None, None)).parameters())
        studies = sum(s.scale == scale for s in space.studies)
        n = search["trials_per_study"]
        asha = (expected_asha_steps(n, steps, cfg.eval_interval, search["grace_period"],
                                    float(search["reduction_factor"]))
                if search["early_stopping"] else without_early_stopping(n, steps))
        ckpt = CHECKPOINT_BYTES_PER_PARAM * n_params
        row = ScaleEstimate(scale, studies * n, steps, steps * cfg.batch_size * cfg.block_size, asha, studies,
                            throughput[scale], eval_tokens, ckpt, sum(seconds for _, seconds in start_up),
                            ckpt / machine.write_bytes_per_s + TUNE_REPORT_S,
                            checkpoint_bytes_per_trial=ckpt * len(report_steps(steps, cfg.eval_interval)))
        row.trial_steps = studies * asha.expected_steps
        row.train_tokens = row.trial_steps * cfg.batch_size * cfg.block_size
        # A trial reports every eval_interval steps (and at its last step).
        row.reports = row.trial_steps / cfg.eval_interval
        fixed = (row.reports * (eval_tokens / row.throughput.eval_forward + row.report_s)
                 + row.trials * row.overhead_s_per_trial)
        row.device_s_live = row.train_tokens / row.throughput.live_step + fixed
        row.device_s_cached = row.train_tokens / row.throughput.student_step + fixed
        rows.append(row)

    # What `kdsweep cache build` would write: the pool's blocks and every val/test protein (capped at
    # the teacher's positions), each token's d_t values in `cache.dtype`.
    blocks = pool_size(cfg, len(data.train_blocks))
    heldout = heldout_tokens(data, positions)
    cache_tokens = blocks * cfg.block_size + sum(heldout.values())
    speed = rows[0].throughput
    build_s = blocks * cfg.block_size / speed.build_train + sum(heldout.values()) / speed.build_heldout
    cache_bytes = sum(cache_sizes(blocks, cfg.block_size, teacher_config.hidden_size, teacher_config.vocab_size,
                                  space.cache["dtype"], heldout).values())
    notes = []
    if float(space.resources["gpus_per_worker"]) > 0 and rt.device.type == "cpu" and set(figures) < set(space.scales):
        notes.append(f"this space trains on GPUs (resources.gpus_per_worker {space.resources['gpus_per_worker']}) "
                     f"but this machine has none, so these are CPU figures, not its bill. To price it: run "
                     f"`kdsweep estimate {space.source or space.name} --device cuda` on a GPU node like the "
                     f"trials', or pass a GPU's measured live-step tokens/s: "
                     + " ".join(f"--tokens-per-s {s}=N" for s in space.scales))
    requested = int(float(space.resources["cpus_per_worker"]))
    if rt.device.type == "cpu" and requested > machine.cores:
        notes.append(f"resources.cpus_per_worker is {requested} but this machine has {machine.cores} cores: "
                     f"probed with {machine.cores} threads")
    if not space.cache["enabled"]:
        notes.append("cache.enabled is false: the sweep runs the live teacher (the cached figures are what "
                     "turning it on would give)")
    if cfg.final_eval:
        notes.append("train.final_eval is on: the test-split metrics at each trial's end are not counted")
    startup = machine.process_s + RAY_START_S + (concurrency * machine.process_s if reuse else 0.0)
    return Estimate(space.name, f"{rt.device.type} ({rt.precision})", concurrency, rows,
                    cache_tokens, blocks * cfg.block_size, cache_bytes, space.cache["dtype"], build_s,
                    search["early_stopping"], startup, cache_bytes / machine.sha256_bytes_per_s, machine,
                    start_up, reuse, notes, time.perf_counter() - started)


def duration(seconds: float) -> str:
    """'45 s', '12.5 min', '3.25 h', '44.8 h', '7,130 h': never scientific notation."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    hours = seconds / 3600
    return f"{hours:.2f} h" if hours < 10 else f"{hours:.1f} h" if hours < 100 else f"{hours:,.0f} h"


def size(n: float) -> str:
    """Bytes as '820 MB', '2.4 GB', '1,536 GB'."""
    if n < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e9:.3g} GB" if n < 1e12 else f"{n / 1e9:,.0f} GB"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Right-aligned columns (the first left-aligned), each as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
            for r in [header, *rows]]


def format_estimate(est: Estimate) -> str:
    rf = "ASHA (expected, sweeps/asha_model.py)" if est.early_stopping else "no early stopping"
    lines = [f"estimate for {est.space} on {est.device}; device-hours = hours of one trial's device "
             f"(a whole GPU, or one trial's CPU cores); {rf}"]
    rows = [[s.scale, f"{s.trials}", f"{s.steps_per_trial:,}", f"{s.tokens_per_trial:,}",
             f"{s.throughput.live_step:,.0f}", f"{s.throughput.student_step:,.0f}", f"{s.trial_steps:,.0f}",
             f"{s.asha.fraction:.0%}", f"{s.studies * s.asha.expected_stopped:.1f}", size(s.checkpoint_bytes_per_trial),
             duration(s.device_s_live), duration(s.device_s_cached)] for s in est.scales]
    trials = sum(s.trials for s in est.scales)
    steps = sum(s.trial_steps for s in est.scales)
    full = sum(s.trials * s.steps_per_trial for s in est.scales)
    rows.append(["total", f"{trials}", "", "", "", "", f"{steps:,.0f}", f"{steps / full:.0%}",
                 f"{sum(s.studies * s.asha.expected_stopped for s in est.scales):.1f}", "",
                 duration(est.device_s_live), duration(est.device_s_cached)])
    lines += table(["scale", "trials", "steps/trial", "tokens/trial", "tok/s live", "tok/s cached", "trial-steps",
                    "of full", "stopped", "ckpt/trial", "device live", "device cached"], rows)
    m = est.machine
    lines.append(f"teacher cache: {est.cache_tokens:,} tokens (train pool + val/test), {size(est.cache_bytes)} in "
                 f"{est.cache_dtype}, built in {duration(est.cache_build_s)} (counted in the cached total), "
                 f"verified once per node in {duration(est.verify_s)} (SHA-256 at {m.sha256_bytes_per_s / 1e9:.2f} GB/s)")
    lines.append(f"wall clock here, {est.concurrency:g} trial(s) at once: {duration(est.wall_s(cached=False))} "
                 f"with a live teacher, {duration(est.wall_s(cached=True))} with the cache")
    lines.append("tokens/s: " + "; ".join(f"{s.scale}: {s.throughput.source}" for s in est.scales))
    first = est.scales[0]
    parts = [f"{part} {seconds:.0f} s" for part, seconds in est.trial_start_up]
    reused = (f"; trials reuse their process, so its start ({m.process_s:.0f} s) is paid once per concurrent slot"
              if est.reuses_processes else "")
    lines.append(f"per trial also: {first.overhead_s_per_trial:.0f} s of start-up ({', '.join(parts)}; set-up and "
                 f"process start measured now{reused}), and per report the "
                 f"validation of {first.eval_tokens_per_report:,} tokens, a checkpoint "
                 f"({', '.join(f'{s.scale} {size(s.checkpoint_bytes)}' for s in est.scales)}; written at "
                 f"{m.write_bytes_per_s / 1e6:,.0f} MB/s) and Tune's {TUNE_REPORT_S:g} s; "
                 f"once per sweep {duration(est.startup_s)} of start-up")
    lines.extend(f"note: {n}" for n in est.notes)
    lines.append(f"(estimated in {est.elapsed_s:.0f} s; nothing was launched)")
    return "\n".join(lines)
