"""One distillation run, written out (SPEC §3–§4): no framework Trainer.

`run_training(cfg, report=...)` trains a student against a frozen teacher:

    for step in range(start, total):
        for each micro-batch:                       # gradient accumulation
            s = student(x).logits                   # (b, T, V), autocast on CUDA
            t = teacher_logits(teacher, x)          # (b, T, V), the one teacher door
            loss = kd_loss(s, t, x, ...) / accum    # SPEC §3, shift inside
            scaler.scale(loss).backward()
        unscale, clip, optimizer + scheduler step
        every eval_interval: val ppl -> JSONL log -> checkpoint -> report(...)

It runs alone (`kdsweep train`) and unchanged inside a Ray trial: Ray only
supplies `report(metrics, checkpoint_dir)` and, on restore, `resume_from`.
When torch.distributed is initialised (Ray Train DDP), each rank takes its
slice of every global batch and gradients are averaged by DDP.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from distill.config import TrainConfig, dump_config
from distill.data import ProteinData, prepare_data
from distill.errors import ConfigError
from distill.loss import kd_loss_terms
from distill.metrics import student_ppl
from distill.models import (
    build_student,
    check_vocab,
    load_teacher,
    load_tokenizer,
    resolve_teacher,
    student_sizes,
    teacher_logits,
)
from distill.optim import make_optimizer, make_scheduler
from distill.runlog import RunLog, read_log
from distill.seeding import seed_everything
from distill.splits import SplitSpec

ReportFn = Callable[[dict, "str | None"], None]


@dataclass
class RunResult:
    status: str  # "completed" | "diverged"
    step: int  # last optimizer step taken (diverged: the step whose loss was non-finite)
    best_val_ppl: float
    best_step: int
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    final_metrics: dict | None = None


@dataclass
class Runtime:
    """Where and how tensors run: device, autocast dtype, process rank."""

    device: torch.device
    precision: str  # resolved: "fp32" | "bf16" | "fp16"
    rank: int = 0
    world_size: int = 1

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    """SPEC §4: fp16/bf16 autocast on CUDA (bf16 where supported), fp32 on CPU unless asked."""
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is visible")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    return Runtime(device, precision, rank, world)


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    per_step = cfg.micro_batch_size * world_size
    if cfg.batch_size % per_step:
        raise ConfigError(
            f"batch_size: {cfg.batch_size} is not a multiple of micro_batch_size x workers "
            f"= {cfg.micro_batch_size} x {world_size}"
        )
    return cfg.batch_size // per_step


def total_steps(cfg: TrainConfig) -> int:
    if cfg.max_tokens is None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.max_tokens / (cfg.batch_size * cfg.block_size)))


class BlockOrder:
    """Which training blocks each (step, rank, micro-batch) reads, as a pure function of the seed.

    The blocks are visited in a fresh seeded permutation per epoch; the global
    batch of step k is positions [k*B, (k+1)*B) of that endless sequence. Being
    a function of the step alone is what makes resume reproduce the data order.
    """

    def __init__(self, n_blocks: int, seed: int):
        self.n, self.seed, self._perms = n_blocks, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch in memory
        return self._perms[epoch]

    def indices(self, step: int, batch_size: int, rank: int, world: int, micro: int, micro_size: int) -> torch.Tensor:
        start = step * batch_size + rank * (batch_size // world) + micro * micro_size
        pos = torch.arange(start, start + micro_size)
        return torch.stack([self._perm(int(p) // self.n)[int(p) % self.n] for p in pos])


def _heldout_ppl(student, data: ProteinData, cfg: TrainConfig, rt: Runtime, pad_id: int) -> dict:
    """Early-stopping metric: student perplexity at tau = 1 on the fixed val subset (SPEC §6)."""
    val = data.val.subset(cfg.val_max_proteins)
    max_tokens = cfg.max_eval_tokens or student.config.n_positions
    was_training = student.training
    student.eval()
    out = student_ppl(student, val.batches(cfg.eval_batch_size, max_tokens, pad_id), device=rt.device,
                      autocast_dtype=rt.autocast_dtype)
    student.train(was_training)
    return out


def run_training(
    cfg: TrainConfig,
    *,
    report: ReportFn | None = None,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train one student; see the module docstring. Resumes from `resume_from` or the run's latest checkpoint."""
    rt = resolve_runtime(cfg)
    is_main = rt.rank == 0
    run_dir = Path(cfg.output_dir)
    ckpt_root = run_dir / "checkpoints"
    finished = finished_run(run_dir)
    if finished is not None:
        # A run that already ended (e.g. just before a driver kill, so Tune restarts it):
        # report its final row again and do not train a second time.
        if report is not None:
            report(finished.history[-1], None)
        log(f"{run_dir} already {finished.status} at step {finished.step}; not training again")
        return finished
    seed_everything(cfg.seed)

    # ---- models and data ------------------------------------------------
    teacher_name = resolve_teacher(cfg.teacher)
    teacher = load_teacher(teacher_name, device=rt.device)
    tokenizer = load_tokenizer(cfg.tokenizer or teacher_name)
    check_vocab(tokenizer, teacher.config, tokenizer_name=cfg.tokenizer or teacher_name)
    data = prepare_data(cfg.data, tokenizer, column=cfg.sequence_column, split=SplitSpec.from_config(cfg),
                        block_size=cfg.block_size)
    sizes = student_sizes(cfg.scale, cfg.n_layer, cfg.n_head, cfg.n_embd)
    student = build_student(teacher.config, sizes, cfg.dropout, seed=cfg.seed).to(rt.device)
    check_vocab(tokenizer, teacher.config, student.config)
    if cfg.block_size > student.config.n_positions:
        raise ConfigError(f"block_size: {cfg.block_size} exceeds the model's n_positions {student.config.n_positions}")
    model = student
    if rt.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(student, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    # ---- optimisation state ---------------------------------------------
    steps = total_steps(cfg)
    accum = accumulation_steps(cfg, rt.world_size)
    optimizer = make_optimizer(student, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, steps)
    # fp16 needs loss scaling; bf16/fp32 do not (the scaler is then a no-op).
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    order = BlockOrder(len(data.train_blocks), cfg.seed)
    pad_id = tokenizer.eos_token_id
    # Only now, with every input validated, does the run write anything.
    runlog = RunLog(run_dir) if is_main else None

    start_step, best = 0, {"val_ppl": math.inf, "step": -1}
    ckpt = Path(resume_from) if resume_from else latest_checkpoint(ckpt_root)
    if ckpt is not None:
        start_step, extra = load_checkpoint(ckpt, student, optimizer, scheduler, scaler)
        best = extra["best"]
        if runlog:
            runlog.truncate_after(start_step)
            runlog.append({"event": "resumed", "step": start_step, "from": str(ckpt)})
        log(f"resumed from {ckpt} at step {start_step}")
    elif is_main:
        # Starting from step 0: rows an attempt killed before its first checkpoint wrote are
        # about to be produced again; drop them so every step appears once.
        runlog.truncate_after(0)
        dump_config(cfg, run_dir / "config.yaml")
        runlog.append({"event": "start", "step": 0, "total_steps": steps, "params": sum(p.numel() for p in student.parameters()),
                       "data": data.info, "precision": rt.precision, "world_size": rt.world_size})

    # ---- the loop ---------------------------------------------------------
    model.train()
    t0, tokens_seen = time.time(), 0
    window = {"loss": 0.0, "hard": 0.0, "soft": 0.0, "n": 0}
    for step in range(start_step, steps):
        for micro in range(accum):
            idx = order.indices(step, cfg.batch_size, rt.rank, rt.world_size, micro, cfg.micro_batch_size)
            x = data.train_blocks[idx].to(rt.device)  # (b, T): inputs and labels (every position valid)
            # DDP all-reduces on the last micro-batch only.
            sync = contextlib.nullcontext() if (micro == accum - 1 or rt.world_size == 1) else model.no_sync()
            with sync:
                with rt.autocast():
                    s_logits = model(input_ids=x).logits  # (b, T, V)
                    t_logits = teacher_logits(teacher, x)  # (b, T, V)
                terms = kd_loss_terms(s_logits, t_logits, x, temperature=cfg.temperature, alpha=cfg.alpha,
                                      uncertainty=cfg.uncertainty, smoothing=cfg.smoothing, weight_norm=cfg.weight_norm)
                loss = terms.loss
                if cfg.inject_nan_at_step is not None and step == cfg.inject_nan_at_step:
                    loss = loss * float("nan")
                if not torch.isfinite(loss):
                    return _diverged(cfg, runlog, report, run_dir, step, best, log)
                # Mean over the accumulated micro-batches: divide each by accum.
                scaler.scale(loss / accum).backward()
            window["loss"] += loss.item() / accum
            window["hard"] += float(terms.hard) / accum
            window["soft"] += float(terms.soft) / accum
            tokens_seen += x.numel() * rt.world_size
        window["n"] += 1
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if done % cfg.eval_interval == 0 or done == steps:
            val = _heldout_ppl(student, data, cfg, rt, pad_id)
            if val["ppl"] < best["val_ppl"]:
                best = {"val_ppl": val["ppl"], "step": done}
            elapsed = time.time() - t0
            n = max(window["n"], 1)
            row = {
                "step": done,
                "tokens": done * cfg.batch_size * cfg.block_size,
                "train_loss": window["loss"] / n,
                "train_hard": window["hard"] / n,
                "train_soft": window["soft"] / n,
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "val_ppl": val["ppl"],
                "val_nll_per_residue": val["nll_per_residue"],
                "best_val_ppl": best["val_ppl"],
                "best_step": best["step"],
                "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                "done_training": done == steps,
            }
            window = {"loss": 0.0, "hard": 0.0, "soft": 0.0, "n": 0}
            ckpt_dir = None
            if is_main:
                runlog.append(row)
                ckpt_dir = str(save_checkpoint(ckpt_root, done, student, optimizer, scheduler, scaler,
                                               {"best": best}, cfg.keep_checkpoints))
                log(f"step {done}/{steps} train_loss {row['train_loss']:.4f} val_ppl {val['ppl']:.4f} "
                    f"({row['tokens_per_s']:.0f} tok/s)")
            if report is not None:
                report(row, ckpt_dir)

    result = RunResult("completed", steps, best["val_ppl"], best["step"], run_dir)
    if is_main:
        save_student(student, tokenizer, run_dir / "student", cfg)
        if cfg.final_eval:
            from distill.evaluate import evaluate_student  # heavy: sampling + full-vocab metrics

            result.final_metrics = evaluate_student(student, teacher, tokenizer, data.test, cfg=cfg, runtime=rt)
            runlog.append({"event": "test", "step": steps, **result.final_metrics})
        write_summary(result)
    return result


def finished_run(run_dir: Path) -> RunResult | None:
    """The RunResult of a run folder whose metrics.json says it ended, else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    rows = read_log(run_dir)
    final = [r for r in rows if r.get("event") == "diverged" or ("val_ppl" in r and "event" not in r)]
    if not final:
        return None
    last = dict(final[-1])
    if last.get("event") == "diverged":
        last["val_ppl"] = float("inf")
    return RunResult(summary["status"], summary["step"], float(summary["best_val_ppl"]), summary["best_step"],
                     run_dir, history=[last], final_metrics=summary.get("test"))


def write_summary(result: RunResult) -> Path:
    """`<run>/metrics.json`: status, best val ppl and its step, and the test metrics if any."""
    path = result.run_dir / "metrics.json"
    summary = {"status": result.status, "step": result.step, "best_val_ppl": result.best_val_ppl,
               "best_step": result.best_step, "test": result.final_metrics}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _diverged(cfg, runlog, report, run_dir, step, best, log) -> RunResult:
    """SPEC §4: a non-finite loss ends the run as `diverged` with its step; it never continues."""
    row = {"event": "diverged", "step": step, "status": "diverged", "best_val_ppl": best["val_ppl"],
           "best_step": best["step"], "done_training": False, "diverged": True}
    log(f"diverged: non-finite loss at step {step}")
    result = RunResult("diverged", step, best["val_ppl"], best["step"], run_dir)
    if runlog:
        runlog.append(row)
        write_summary(result)
    if report is not None:
        report({**row, "val_ppl": float("inf")}, None)
    return result


def save_student(student, tokenizer, out: Path, cfg: TrainConfig) -> None:
    """A folder `AutoModelForCausalLM/AutoTokenizer.from_pretrained` load directly."""
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    dump_config(cfg, out / "kdsweep_config.yaml")
