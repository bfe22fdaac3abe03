"""One distillation run, written out (method §3–§4): no framework Trainer.

`run_training(cfg, report=...)` trains a student against a frozen teacher:

    teacher = the live model, or a teacher cache (distill/teacher/source.py)
    for step in range(start, total):
        for each micro-batch of pool blocks:        # gradient accumulation (distill/run/step.py)
            h_s, W_s = student body(x), its head    # fused path: no (b, T, V) logits
            h_t, W_t = teacher.train_batch(x)       # live forward, or cached hidden states
            loss = fused_kd_loss(h_s, W_s, h_t, W_t, x, ...) / accum   # method §3, shift inside
            scaler.scale(loss).backward()
        unscale, clip, optimizer + scheduler step
        every eval_interval: val ppl -> JSONL log -> checkpoint -> report(...)

The blocks come from a fixed pool read in a seeded order (distill/data/block_order.py).
It runs alone (`kdsweep train`) and unchanged inside a Ray trial: Ray only
supplies `report(metrics)`; a restarted trial resumes from its run
folder's own newest checkpoint, which Ray never copies (distill/run/checkpoint.py).
When torch.distributed is initialised (Ray Train DDP), each rank takes its
slice of every global batch and gradients are averaged by DDP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kdsweep.distill.config import TrainConfig, dump_config
from kdsweep.distill.data.batches import ProteinData, unigram_log_probs
from kdsweep.distill.data.block_order import BlockOrder, pool_size, total_steps
from kdsweep.distill.errors import ConfigError
from kdsweep.distill.eval.metrics import student_ppl
from kdsweep.distill.files import digests
from kdsweep.distill.inputs import check_positions, load_run_inputs
from kdsweep.distill.models import build_student, check_vocab, student_sizes
from kdsweep.distill.optim import make_optimizer, make_scheduler
from kdsweep.distill.run.checkpoint import folder_bytes, restore_latest, save_checkpoint
from kdsweep.distill.run.evaluate import evaluate_student
from kdsweep.distill.run.rerun import check_same_config
from kdsweep.distill.run.rundir import (
    CHECKPOINTS_DIR,
    COMPLETED,
    CONFIG_NAME,
    DIVERGED,
    RESTARTED,
    STUDENT_DIR,
    RunLog,
    RunResult,
    TrainReport,
    finished_run,
    save_student,
    write_summary,
)
from kdsweep.distill.run.step import LossSettings, make_scaler, optimizer_step, training_module
from kdsweep.distill.runtime import Runtime, resolve_runtime
from kdsweep.distill.seeding import seed_everything
from kdsweep.distill.teacher.source import open_teacher

ReportFn = Callable[[dict], None]


@dataclass
class RunCosts:
    """What one attempt of a run pays besides its steps, reported in every eval row (cumulative):
    the per-trial costs that grow with the problem (benchmarks/rehearsal.py, `kdsweep estimate`).

    first_step_s          seconds from `run_training`'s start to the end of its first step
    steady_tokens_per_s   train tokens per second of the steps after the first, evals and checkpoints excluded
    bytes_hashed          bytes this attempt SHA-256-hashed (data file, teacher, cache files): 0 once its
                          node has verified them (distill/files/digests.py)
    cache_bytes_read      bytes read from the teacher cache (0 with a live teacher)

    (The bytes of each checkpoint are the run log's "checkpoint" events, written once it is in place.)
    """

    started: float = field(default_factory=time.perf_counter)
    hashed_at_start: int = field(default_factory=digests.bytes_hashed)
    first_step_s: float | None = None
    steady_s: float = 0.0
    steady_tokens: int = 0
    _mark: float = 0.0  # end of the last timed stretch of steps

    def step_done(self, tokens: int) -> bool:
        """After each step: True after the first (whose time `first_step_s` records)."""
        now = time.perf_counter()
        if self.first_step_s is None:
            self.first_step_s, self._mark = now - self.started, now
            return True
        self.steady_tokens += tokens
        return False

    def pause(self) -> None:
        """Before an eval: the steps since the last mark count as steady training time."""
        if self.first_step_s is not None:
            now = time.perf_counter()
            self.steady_s += now - self._mark
            self._mark = now

    def resume(self) -> None:
        """After the eval, checkpoint and report: their time is not training time."""
        self._mark = time.perf_counter()

    def row(self, teacher) -> dict:
        return {"first_step_s": self.first_step_s,
                "steady_tokens_per_s": self.steady_tokens / self.steady_s if self.steady_s > 0 else None,
                "bytes_hashed": digests.bytes_hashed() - self.hashed_at_start,
                "cache_bytes_read": teacher.bytes_read}


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    per_step = cfg.micro_batch_size * world_size
    if cfg.batch_size % per_step:
        raise ConfigError(
            f"batch_size: {cfg.batch_size} is not a multiple of micro_batch_size x workers "
            f"= {cfg.micro_batch_size} x {world_size}"
        )
    return cfg.batch_size // per_step


def _heldout_ppl(student, data: ProteinData, cfg: TrainConfig, rt: Runtime, pad_id: int) -> dict:
    """Early-stopping metric: student perplexity at tau = 1 on the fixed val subset (method §6)."""
    val = data.val.subset(cfg.val_max_proteins)
    max_tokens = cfg.max_eval_tokens or student.config.n_positions
    return student_ppl(student, val.batches(cfg.eval_batch_size, max_tokens, pad_id), device=rt.device,
                       autocast_dtype=rt.autocast_dtype)


def run_training(
    cfg: TrainConfig,
    *,
    report: ReportFn | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train one student; see the module docstring. Resumes from the run's latest checkpoint."""
    costs = RunCosts()
    rt = resolve_runtime(cfg.precision, cfg.device)
    is_main = rt.rank == 0
    run_dir = Path(cfg.output_dir)
    ckpt_root = run_dir / CHECKPOINTS_DIR
    check_same_config(cfg, run_dir)  # a re-run with another config must not mix into this run
    finished = finished_run(run_dir)
    if finished is not None:
        # A run that already ended (e.g. just before a driver kill, so Tune restarts it):
        # report its final row again and do not train a second time.
        if report is not None:
            report(finished.last_row)
        log(f"{run_dir} already {finished.status} at step {finished.step}; not training again")
        return finished
    seed_everything(cfg.seed)

    # ---- models and data ------------------------------------------------
    inputs = load_run_inputs(cfg)
    teacher_config, tokenizer, data = inputs.teacher_config, inputs.tokenizer, inputs.data
    pool = pool_size(cfg, len(data.train_blocks))
    # Before the student is built: loading a model may draw from torch's RNG, and the student's
    # initialisation and dropout must not depend on whether the teacher is live or cached.
    teacher = open_teacher(cfg, inputs.teacher_name, teacher_config, data.info, pool, rt)
    sizes = student_sizes(cfg.scale, cfg.n_layer, cfg.n_head, cfg.n_embd)
    student = build_student(teacher_config, sizes, cfg.dropout, seed=cfg.seed).to(rt.device)
    check_vocab(tokenizer, teacher_config, student.config)
    check_positions(cfg, student.config.n_positions, "student")
    model = training_module(student, cfg.loss_impl)
    if rt.world_size > 1:
        # DDP wraps the module the loop calls forward on (for fused: the body + head module), so
        # every parameter's gradient, the tied head's included, is all-reduced.
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    # ---- optimisation state ---------------------------------------------
    steps = total_steps(cfg)
    accum = accumulation_steps(cfg, rt.world_size)
    optimizer = make_optimizer(student, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, steps)
    scaler = make_scaler(rt)
    order = BlockOrder(pool, cfg.seed)
    loss_settings = LossSettings.from_config(cfg)
    pad_id = tokenizer.eos_token_id
    # Only now, with every input validated, does the run write anything.
    runlog = RunLog(run_dir) if is_main else None

    best = {"val_ppl": math.inf, "step": -1}
    ckpt, start_step, extra = restore_latest(ckpt_root, student, optimizer, scheduler, scaler, log)
    if ckpt is not None:
        best = extra["best"]
        if runlog:
            runlog.truncate_after(start_step)
            runlog.append({"event": "resumed", "step": start_step, "from": str(ckpt)})
        log(f"resumed from {ckpt} at step {start_step}")
    elif is_main:
        # Starting from step 0: rows an attempt killed before its first checkpoint wrote are
        # about to be produced again; drop them so every step appears once.
        lost = runlog.truncate_after(0)
        if lost > 0:  # an earlier attempt trained to `lost` and left no checkpoint here: say so, never "resumed"
            runlog.append({"event": RESTARTED, "step": 0, "lost_step": lost, "checkpoints": str(ckpt_root)})
        dump_config(cfg, run_dir / CONFIG_NAME)
        runlog.append({"event": "start", "step": 0, "total_steps": steps, "params": sum(p.numel() for p in student.parameters()),
                       "data": data.info, "pool_blocks": pool, "precision": rt.precision, "world_size": rt.world_size,
                       "teacher": teacher.describe(), "loss_impl": cfg.loss_impl})

    # ---- the loop ---------------------------------------------------------
    model.train()
    t0, tokens_seen = time.time(), 0
    # Running sums of (loss, hard, soft) per optimizer step, kept on the device: the host reads
    # them only at evaluation, so the step itself never waits for the device.
    window, window_steps = torch.zeros(3, dtype=torch.float64, device=rt.device), 0

    def step_blocks(step: int) -> list[torch.Tensor]:
        """This rank's (b,) pool blocks of each micro-batch of `step`."""
        return [order.indices(step, cfg.batch_size, rt.rank, rt.world_size, micro, cfg.micro_batch_size)
                for micro in range(accum)]

    for step in range(start_step, steps):
        # (b,) blocks, (b, T) ids = labels; a teacher cache reads the next step's blocks during this one.
        batches = [(idx, data.train_blocks[idx].to(rt.device)) for idx in step_blocks(step)]
        result = optimizer_step(model, student, teacher, batches, loss=loss_settings, rt=rt, optimizer=optimizer,
                                scheduler=scheduler, scaler=scaler, grad_clip=cfg.grad_clip,
                                poison=cfg.inject_nan_at_step == step,
                                prefetch=step_blocks(step + 1) if step + 1 < steps else [])
        if result.grad_norm is None:
            # method §4: a non-finite loss ends the run, before its gradients reach the weights.
            return _diverged(runlog, report, run_dir, step, best, log)
        step_tokens = accum * cfg.micro_batch_size * cfg.block_size * rt.world_size
        tokens_seen += step_tokens
        if costs.first_step_s is None and rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)  # once: the first step's time is its real time
        if costs.step_done(step_tokens) and is_main:
            runlog.append({"event": "first_step", "step": step + 1, "seconds": costs.first_step_s,
                           "time": time.time()})
        window += result.terms
        window_steps += 1
        grad_norm = result.grad_norm

        done = step + 1
        final = done == steps
        if done % cfg.eval_interval == 0 or final:
            costs.pause()
            val = _heldout_ppl(student, data, cfg, rt, pad_id)
            if cfg.inject_inf_val_at_step == done:
                val["ppl"] = math.inf
            if not math.isfinite(val["ppl"]):
                # The loss stayed finite but the model's predictions did not (e.g. inf logits on
                # held-out proteins): the run has diverged just the same (method §4).
                return _diverged(runlog, report, run_dir, done, best, log)
            if val["ppl"] < best["val_ppl"]:
                best = {"val_ppl": val["ppl"], "step": done}
            elapsed = time.time() - t0
            train_loss, train_hard, train_soft = (window / max(window_steps, 1)).tolist()
            row = TrainReport(done, val["ppl"], best["val_ppl"], best["step"], done_training=final, extra={
                "tokens": done * cfg.batch_size * cfg.block_size,
                "train_loss": train_loss,
                "train_hard": train_hard,
                "train_soft": train_soft,
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "val_nll_per_residue": val["nll_per_residue"],
                "val_ece": val["ece"],
                "val_accuracy": val["accuracy"],
                "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
            }).to_row()
            window.zero_()
            window_steps = 0
            if is_main:
                row.update(costs.row(teacher))
                runlog.append(row)  # before the checkpoint: a resume from step k keeps the row of step k
                saved = save_checkpoint(ckpt_root, done, student, optimizer, scheduler, scaler, {"best": best},
                                        cfg.keep_checkpoints)
                runlog.append({"event": "checkpoint", "step": done, "bytes": folder_bytes(saved), "time": time.time()})
                log(f"step {done}/{steps} train_loss {row['train_loss']:.4f} val_ppl {val['ppl']:.4f} "
                    f"({row['tokens_per_s']:.0f} tok/s)")
                if final:
                    # Everything the run leaves behind is written BEFORE its last report: a
                    # scheduler may end the trial's process as soon as it has that report.
                    _finish(student, teacher, tokenizer, data, cfg, rt, runlog, row, best)
            if report is not None:
                report(row)
            costs.resume()
    return finished_run(run_dir) if is_main else RunResult(COMPLETED, steps, best["val_ppl"], best["step"], run_dir)


def _finish(student, teacher, tokenizer, data: ProteinData, cfg: TrainConfig, rt: Runtime, runlog: RunLog,
            row: dict, best: dict) -> None:
    """The end of a completed run: the student (the FINAL model: it is what the objective, the
    final val_ppl, measured), the held-out metrics if asked (val for choosing, test for
    reporting: method §7), then the summary that marks the run as ended."""
    run_dir = Path(cfg.output_dir)
    save_student(student, tokenizer, run_dir / STUDENT_DIR, cfg)
    result = RunResult(COMPLETED, row["step"], best["val_ppl"], best["step"], run_dir, last_row=row,
                       val_ppl=row["val_ppl"])
    if cfg.final_eval:
        result.val_metrics = evaluate_student(student, teacher, tokenizer, data.val, cfg=cfg, runtime=rt,
                                              generation=False)
        runlog.append({"event": "val", "step": row["step"], **result.val_metrics})
        if len(data.test):
            # the unigram floor: train token frequencies (the packed train blocks hold every train token
            # but the last block's remainder), scored on the test tokens the student is scored on
            result.final_metrics = evaluate_student(student, teacher, tokenizer, data.test, cfg=cfg, runtime=rt,
                                                    unigram=unigram_log_probs(data.train_blocks, len(tokenizer)))
            runlog.append({"event": "test", "step": row["step"], **result.final_metrics})
    write_summary(result)


def _diverged(runlog: RunLog | None, report: ReportFn | None, run_dir: Path, step: int, best: dict, log) -> RunResult:
    """method §4: a non-finite loss (or held-out ppl) ends the run as `diverged` with its step; it never continues."""
    row = TrainReport(step, best_val_ppl=best["val_ppl"], best_step=best["step"], diverged=True,
                      extra={"event": DIVERGED, "status": DIVERGED}).to_row()
    log(f"diverged: non-finite loss or held-out perplexity at step {step}")
    result = RunResult(DIVERGED, step, best["val_ppl"], best["step"], run_dir, last_row=row)
    if runlog:
        runlog.append(row)
        write_summary(result)
    if report is not None:
        report({**row, "val_ppl": float("inf")})
    return result
