"""kdsweep's training step against the study's trainer, side by side in one process.

Run from the repository root (needs the `bench` extra: ``pip install -e ".[bench]"``):

    python benchmarks/vs_seed.py                      # CPU: 6 x 512 ProtGPT2-shaped teacher, micro student
    python benchmarks/vs_seed.py --device cuda        # GPU: ProtGPT2's own shape (36 x 1280), tiny/small/medium, bf16
    python benchmarks/vs_seed.py --device cuda --max-batch 256   # also the largest micro-batch that fits

Variants, every one on the same token blocks (the first B train blocks of the first
``--proteins`` bundled proteins, hash split, tokenized with ProtGPT2's tokenizer), batch size, block length, teacher weights (a random
init with ProtGPT2's vocabulary and config, ``save_pretrained`` once, then loaded by each
side its own way), student initial weights (seeded) and precision (fp32 on CPU, bf16 AMP
on CUDA):

1. study:  the study's ``DistillationTrainer`` re-implemented (benchmarks/study_trainer.py:
           HF Trainer subclass, teacher forward every step, full-vocabulary fp32 softmaxes,
           the uniform (B, L, V) smoothing tensor), driven by ``Trainer.train()``;
2. kdsweep, live teacher: ``distill.run.step.Stepper`` (the training loop's own step: the fused
           LM head + KD loss from hidden states, no (B, L, V) tensor, AdamW, clipping) with a
           ``LiveTeacher``: the teacher's base forward every step;
3. kdsweep, cached teacher: the same step with a ``CachedTeacher``: a real teacher cache of
           those blocks (benchmarks/bench_cache.py, ``--cache-dtype``, built once before the
           rounds, its build time printed), read from its memory-mapped shards every step,
           as a sweep's trials read it.

Every ``--arms`` (default ``both``; ``all``: baseline, uncertainty, calibration, both) runs
the three variants in this process. Per variant: tokens/s (B * L / median step wall time),
its ratio to the study's beside the FLOP bound (the study's matmul FLOPs per token over
the variant's, distill.run.probe.step_flops_per_token: 1.0 for the live teacher, which does
the same matmuls; student training + teacher head only for the cache) and the goals
(live >= 1.0, cached >= 0.8 of the bound), median CPU seconds per step, peak
extra memory of a step (above the steady state just before it: RSS with glibc's mmap
threshold fixed at 1 MiB on CPU, the allocator's peak on CUDA; benchmarks/memory.py; a
step is timed or measured for memory, never both: the last step of each run is the memory
step, timed steps run with glibc's 32 MiB threshold like a long-running process), and
where the time goes (mean seconds per phase). Then, separately, the loss + LM heads alone at
B * L = 4096 from the two models' hidden states: the study's two (B, L, V) logits and its
loss against the fused loss, forward and backward (gradients wrt the student's hidden states
and head). Rounds: the three variants run one after the other ``--rounds`` times (so slow
drift on a shared machine hits them alike); medians over all measured steps.

``--no-memory`` skips the memory step and that comparison (shorter runs); ``--ops`` adds
one profiled step per variant and prints its ATen op count, the CPU's proxy for kernel
launches per step. The cached variant names each step's successor's blocks, so its
reads come from the background read-ahead (distill.teacher.source.BlockPrefetcher), as
in training. A summary table across arms closes the output.

Ratios are printed against the study; the load average is printed at start and end,
because on a shared machine wall times move with it (CPU seconds move less).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import MB, PeakExtra, allocator_for  # noqa: E402
from benchmarks.step_meter import StepMeter  # noqa: E402
from benchmarks.study_trainer import FixedBatch, StepClock, StudyTrainer, study_arguments, study_loss  # noqa: E402
from benchmarks.bench_cache import BenchCache, build_bench_cache  # noqa: E402
from kdsweep.distill.loss.fused import fused_kd_loss  # noqa: E402
from kdsweep.distill.loss.kd import KDOptions  # noqa: E402
from kdsweep.distill.loss.reference import ARMS  # noqa: E402
from kdsweep.distill.models import (  # noqa: E402
    PROTGPT2_TOKENIZER_DIR,
    build_student,
    load_teacher,
    load_tokenizer,
    save_protgpt2_shaped,
    student_sizes,
)
from kdsweep.distill.run.phases import PHASES, PhaseTimer  # noqa: E402
from kdsweep.distill.run.probe import step_flops_per_token  # noqa: E402
from kdsweep.distill.run.step import LossSettings, Stepper  # noqa: E402
from kdsweep.distill.runtime import Runtime  # noqa: E402
from kdsweep.distill.teacher.cache import STORAGE_DTYPES  # noqa: E402
from kdsweep.distill.teacher.source import LiveTeacher  # noqa: E402

STUDY, LIVE, CACHED = "study trainer", "kdsweep, live teacher", "kdsweep, cached teacher"
# Dense bf16 peak of the GPU, for the MFU estimate (vendor figures, TFLOP/s).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--teacher-layers", type=int, help="default: 6 on CPU, ProtGPT2's 36 on CUDA")
    ap.add_argument("--teacher-width", type=int, help="default: 512 on CPU, ProtGPT2's 1280 on CUDA")
    ap.add_argument("--teacher-heads", type=int, help="default: 8 on CPU, ProtGPT2's 20 on CUDA")
    ap.add_argument("--students", help="comma-separated scales; default: micro on CPU, tiny,small,medium on CUDA")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--arms", default="both",
                    help=f"comma-separated arms of {list(ARMS)}, or 'all'; each runs every variant in this process")
    ap.add_argument("--ops", action="store_true",
                    help="after the rounds, one more step of each variant under torch.profiler: ATen ops per step")
    ap.add_argument("--no-memory", action="store_true",
                    help="timed steps only: no memory step, no loss + heads memory comparison (shorter runs)")
    ap.add_argument("--steps", type=int, default=2, help="measured steps per variant and round")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps per variant and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--proteins", type=int, default=3000,
                    help="bundled proteins read (their train split gives the blocks, the cache also holds their val/test)")
    ap.add_argument("--cache-dtype", choices=STORAGE_DTYPES, default="fp32", help="the teacher cache's storage dtype")
    ap.add_argument("--skip-study", action="store_true", help="kdsweep variants only (e.g. a batch the study cannot fit)")
    ap.add_argument("--max-batch", type=int, default=0,
                    help="CUDA only: also find the largest micro-batch (powers of 2 up to this) each variant fits")
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: by GPU name)")
    ap.add_argument("--threads", type=int, help="torch threads on CPU (default: torch's)")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    protgpt2 = GPT2Config.from_pretrained(PROTGPT2_TOKENIZER_DIR)
    args.teacher_layers = args.teacher_layers or (protgpt2.n_layer if cuda else 6)
    args.teacher_width = args.teacher_width or (protgpt2.n_embd if cuda else 512)
    args.teacher_heads = args.teacher_heads or (protgpt2.n_head if cuda else 8)
    args.students = (args.students or ("tiny,small,medium" if cuda else "micro")).split(",")
    args.arms = list(ARMS) if args.arms == "all" else args.arms.split(",")
    if bad := [a for a in args.arms if a not in ARMS]:
        ap.error(f"--arms: unknown {bad}; allowed: {list(ARMS)} or 'all'")
    return args


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def loss_settings(arm: str) -> LossSettings:
    uncertainty, smoothing = ARMS[arm]
    return LossSettings(KDOptions(temperature=2.0, alpha=0.5, uncertainty=uncertainty, smoothing=smoothing,
                                  weight_norm="mask"), impl="fused")


def n_steps(args) -> int:
    """Steps of one run: warm-up, timed, then (unless --no-memory) one step measured for peak memory."""
    return args.warmup + args.steps + (0 if args.no_memory else 1)


def memory_steps(args) -> list[int]:
    """0-based indices of the steps measured for peak memory."""
    return [] if args.no_memory else [n_steps(args) - 1]


def study_tokenizer():
    """ProtGPT2's tokenizer as scripts/train.py set it up: pad = eos, left padding."""
    tokenizer = load_tokenizer(str(PROTGPT2_TOKENIZER_DIR))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def run_study(args, teacher, student, blocks, loss: LossSettings, work: Path) -> StepMeter:
    device = torch.device(args.device)
    timer = PhaseTimer(device)
    meter = StepMeter(device, timer)
    o = loss.options
    trainer = StudyTrainer(
        o.temperature, o.alpha, teacher, use_uncertainty_weighting=o.uncertainty,
        use_calibration_smoothing=o.smoothing is not None, smoothing_factor=o.smoothing or 0.1,
        model=student, args=study_arguments(str(work / "study"), batch=len(blocks), steps=n_steps(args),
                                            lr=1e-3, device=device),
        train_dataset=FixedBatch(blocks), processing_class=study_tokenizer(),
        callbacks=[StepClock(meter, memory_steps=memory_steps(args))], timer=timer)
    trainer.remove_callback(PrinterCallback)  # it prints the Trainer's log lines
    trainer.train()
    return meter


def run_kdsweep(args, teacher, student, blocks, loss: LossSettings, rt: Runtime) -> StepMeter:
    """``n_steps`` steps of kdsweep's training step on ``blocks`` (B, L), pool blocks 0 .. B - 1,
    against ``teacher`` (a ``LiveTeacher`` or the ``CachedTeacher``)."""
    timer = PhaseTimer(rt.device)
    meter = StepMeter(rt.device, timer)
    x, index = blocks.to(rt.device), torch.arange(len(blocks))
    stepper = Stepper(student, teacher, rt, loss, lr=1e-3)
    for i in range(n_steps(args)):
        meter.begin(memory=i in memory_steps(args))
        stepper.step(index, x, timer, next_blocks=index)  # the next step reads the same blocks, ahead
        meter.end(rest="optimizer")
    return meter


def loss_and_heads_memory(args, teacher: LiveTeacher, student, blocks, loss: LossSettings,
                          rt: Runtime) -> dict[str, int]:
    """Peak extra memory of the loss + LM heads alone (forward and backward) from hidden states."""
    x = blocks.to(rt.device)
    with torch.no_grad(), rt.autocast():
        student_hidden = student.base_model(input_ids=x).last_hidden_state.float()
        t = teacher.train_batch(None, x)
    teacher_hidden, teacher_head = t.hidden.float(), t.weight.detach()  # (B, L, d_t), (V, d_t)
    student_head = student.get_output_embeddings().weight.detach()
    mask = torch.ones_like(x)

    def study(h, w):
        with torch.no_grad():
            t_logits = teacher_hidden @ teacher_head.T  # the teacher's LM head: (B, L, V)
        o = loss.options
        return study_loss(h @ w.T, t_logits, x, mask, temperature=o.temperature, alpha=o.alpha,
                          uncertainty=o.uncertainty, smoothing=o.smoothing)

    def fused(h, w):
        return fused_kd_loss(h, w, teacher_hidden, teacher_head, x, loss.options)

    peaks = {}
    for name, fn in ((STUDY, study), (LIVE, fused)):
        h = student_hidden.detach().clone().requires_grad_(True)
        w = student_head.clone().requires_grad_(True)
        gc.collect()
        if rt.device.type == "cpu":
            allocator_for(memory=True)
        with rt.autocast(), PeakExtra(rt.device) as peak:
            fn(h, w).backward()
        peaks[name] = peak.extra
        del h, w
        gc.collect()
    return peaks


def largest_batch(fn, limit: int) -> int:
    """Largest power of two <= limit for which ``fn(batch)`` runs without CUDA OOM (0 if none)."""
    best, batch = 0, 1
    while batch <= limit:
        try:
            fn(batch)
            best = batch
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        batch *= 2
    return best


def main() -> None:
    args = parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    mmap_fixed = device.type == "cpu" and allocator_for(memory=False)
    rt = Runtime(device, "bf16" if device.type == "cuda" else "fp32")
    probe = loss_settings(args.arms[0])
    work = Path(tempfile.mkdtemp(prefix="kdsweep-vs-seed-"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"torch {torch.__version__}, device {gpu or 'cpu'}, threads {torch.get_num_threads()}, "
          f"{rt.precision}, arms {', '.join(args.arms)} (tau {probe.options.temperature}, alpha {probe.options.alpha}, lambda 0.1 "
          "where smoothing is on)"
          + (", glibc mmap threshold 32 MiB for timed steps" if mmap_fixed else "")
          + (", 1 MiB (heap trimmed) for memory" if mmap_fixed and not args.no_memory else ""))
    print(f"load average at start: {load_average()}")
    # ProtGPT2's config at the asked depth and width, random weights (seed 0), saved like a hub model.
    teacher_dir = save_protgpt2_shaped(work / "teacher", n_layer=args.teacher_layers, n_head=args.teacher_heads,
                                       n_embd=args.teacher_width)
    live = LiveTeacher(load_teacher(str(teacher_dir), device=device), str(teacher_dir))  # kdsweep's teacher door
    study_teacher = GPT2LMHeadModel.from_pretrained(teacher_dir).to(device)  # the study's (eval mode, fp32)
    cache = build_bench_cache(teacher_dir, work, proteins=args.proteins, block=args.length,
                              blocks=max(args.batch, args.max_batch if device.type == "cuda" else 0),
                              precision=rt.precision, device=args.device, dtype=args.cache_dtype)
    blocks = cache.train_blocks[:args.batch]
    n_tokens = blocks.numel()
    t = live.config
    print(f"teacher: {t.n_layer} x {t.n_embd} ({t.n_head} heads), V = {t.vocab_size}, "
          f"{live.n_params / 1e6:.1f} M parameters (random init)")
    print(cache.describe())
    print(f"batch: B = {args.batch}, L = {args.length} (B*L = {n_tokens}); {args.warmup} warm-up + {args.steps} "
          f"measured steps per variant, {args.rounds} rounds")

    table = []
    for scale in args.students:
        torch.manual_seed(0)
        student0 = build_student(live.config, student_sizes(scale, None, None, None), 0.1, seed=0)
        n_student = sum(p.numel() for p in student0.parameters())
        for arm in args.arms:
            loss = loss_settings(arm)
            print(f"\n=== student {scale}: {n_student / 1e6:.2f} M parameters; arm {arm} ===")
            results: dict[str, list[StepMeter]] = {}
            variants = [(LIVE, live), (CACHED, cache.teacher)]
            for _ in range(args.rounds):
                if not args.skip_study:
                    student = copy.deepcopy(student0).to(device)
                    results.setdefault(STUDY, []).append(run_study(args, study_teacher, student, blocks, loss, work))
                    del student
                    gc.collect()
                for name, teacher in variants:
                    student = copy.deepcopy(student0).to(device)
                    results.setdefault(name, []).append(run_kdsweep(args, teacher, student, blocks, loss, rt))
                    del student
                    gc.collect()
            table.append((scale, arm, report(results, args, n_tokens, student0, live.model, gpu)))
            if args.ops:
                report_ops(args, study_teacher, variants, student0, blocks, loss, rt, work)
            if not args.no_memory:
                report_loss_memory(args, live, student0, blocks, loss, rt)
        if args.max_batch and device.type == "cuda":
            report_largest_batch(args, study_teacher, live, cache, student0, loss_settings(args.arms[0]), rt, work)
    if not args.skip_study:
        print("\nsummary: tokens/s against the study's trainer (FLOP bound: study's matmul FLOPs / the variant's; "
              "goals: live >= 1.0, cached >= 0.8 of the bound)")
        print(f"  {'student':8s} {'arm':12s} {'live':>7s} {'bound':>7s} {'cached':>7s} {'bound':>7s} {'of bound':>9s}")
        for scale, arm, r in table:
            print(f"  {scale:8s} {arm:12s} {r[LIVE][0]:6.2f}x {r[LIVE][1]:6.2f}x {r[CACHED][0]:6.2f}x "
                  f"{r[CACHED][1]:6.2f}x {r[CACHED][0] / r[CACHED][1]:9.2f}")
    print(f"\nload average at end: {load_average()}")


def report_ops(args, study_teacher, variants, student0, blocks, loss: LossSettings, rt: Runtime, work) -> None:
    """ATen ops of one step of each variant (torch.profiler, every op it records): on a GPU each
    is a kernel launch or more, so this is the CPU's proxy for launches per step."""
    one = argparse.Namespace(**{**vars(args), "warmup": 0, "steps": 1, "no_memory": True})
    runs = [] if args.skip_study else [(STUDY, lambda s: run_study(one, study_teacher, s, blocks, loss, work))]
    runs += [(name, lambda s, t=teacher: run_kdsweep(one, t, s, blocks, loss, rt)) for name, teacher in variants]
    print("ATen ops per step (torch.profiler, CPU; the proxy for kernel launches):")
    for name, run in runs:
        student = copy.deepcopy(student0).to(rt.device)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(student)
        print(f"  {name:26s} {sum(1 for e in prof.events() if e.name.startswith('aten::')):9d}")


def report_loss_memory(args, live: LiveTeacher, student0, blocks, loss: LossSettings, rt: Runtime) -> None:
    peaks = loss_and_heads_memory(args, live, copy.deepcopy(student0).to(rt.device), blocks, loss, rt)
    print(f"loss + LM heads alone (forward + backward from hidden states), B*L = {blocks.numel()}, "
          f"V = {live.config.vocab_size}:")
    for name, peak in peaks.items():
        print(f"  {name if name == STUDY else 'kdsweep fused loss':24s} peak extra {peak / MB:8.0f} MB")
    print(f"  ratio kdsweep / study: {peaks[LIVE] / peaks[STUDY]:.3f}   (goal <= 0.10)")


def summarize(meters: list[StepMeter], skip: int) -> dict:
    """Pool the measured steps of every round."""
    pooled = StepMeter(meters[0].device, None)
    for m in meters:
        pooled.steps.extend(m.steps[skip:])
    return pooled.summary(0)


def report(results: dict[str, list[StepMeter]], args, n_tokens: int, student, teacher,
           gpu: str | None) -> dict[str, tuple[float, float]]:
    """Print one (student, arm)'s table; return {variant: (tokens/s ratio to the study, FLOP bound)}."""
    summary = {name: summarize(meters, args.warmup) for name, meters in results.items()}
    flops = {name: step_flops_per_token(student, teacher, args.length, teacher_live=name != CACHED)
             for name in summary}
    peak_tflops = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if gpu and k in gpu), None)
    print(f"{'variant':26s} {'tokens/s':>9s} {'step wall s':>11s} {'step CPU s':>10s} {'peak extra MB':>13s}"
          + ("   MFU" if peak_tflops else "") + "   (wall per measured step)")
    for name, s in summary.items():
        tps = n_tokens / s["wall"]
        mfu = f"  {tps * flops[name] / (peak_tflops * 1e12):5.1%}" if peak_tflops else ""
        peak = "-" if s["peak_extra"] is None else f"{s['peak_extra'] / MB:.0f}"
        print(f"{name:26s} {tps:9.0f} {s['wall']:11.2f} {s['cpu']:10.2f} {peak:>13s}{mfu}   "
              + ", ".join(f"{w:.2f}" for w in s["walls"]))
    ratios = {}
    if STUDY in summary:
        base = summary[STUDY]
        for name in (LIVE, CACHED):
            s = summary[name]
            ratio, bound = base["wall"] / s["wall"], flops[STUDY] / flops[name]
            goal = 1.0 if name == LIVE else 0.8 * bound
            memory = "" if s["peak_extra"] is None else \
                f", step peak extra memory x{s['peak_extra'] / base['peak_extra']:.3f}"
            print(f"{name} / study: tokens/s x{ratio:.2f} (FLOP bound x{bound:.2f}, goal >= x{goal:.2f}; "
                  f"CPU time x{base['cpu'] / s['cpu']:.2f}){memory}")
            ratios[name] = (ratio, bound)
    for key, what in (("phases", "wall"), ("phases_cpu", "CPU (process time)")):
        print(f"where a step's time goes: {what} seconds per step, mean, and share of the step")
        print(f"  {'phase':18s}" + "".join(f"{name:>28s}" for name in summary))
        for phase in PHASES:
            cells = []
            for s in summary.values():
                sec, total = s[key].get(phase, 0.0), sum(s[key].values())
                cells.append(f"{sec:9.2f} s ({sec / total:4.0%})" if sec else f"{'-':>9s}            ")
            print(f"  {phase:18s}" + "".join(f"{c:>28s}" for c in cells))
    return ratios


def report_largest_batch(args, study_teacher, live: LiveTeacher, cache: BenchCache, student0, loss, rt,
                         work) -> None:
    blocks = cache.train_blocks[:args.max_batch]
    one = argparse.Namespace(**{**vars(args), "warmup": 0, "steps": 0})

    def study(batch):
        run_study(one, study_teacher, copy.deepcopy(student0).to(rt.device), blocks[:batch], loss, work)

    def kd(teacher):
        return lambda batch: run_kdsweep(one, teacher, copy.deepcopy(student0).to(rt.device), blocks[:batch], loss, rt)

    print(f"largest micro-batch that fits (L = {args.length}, powers of 2 up to {args.max_batch}):")
    for name, fn in ((STUDY, study), (LIVE, kd(live)), (CACHED, kd(cache.teacher))):
        print(f"  {name:26s} {largest_batch(fn, args.max_batch)}")


if __name__ == "__main__":
    main()
