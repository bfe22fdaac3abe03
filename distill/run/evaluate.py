"""Every method §5 metric of a student against its teacher on one held-out set.

Used at the end of `kdsweep train` (test split), by `kdsweep evaluate`, and by
replicate trials. The result is a flat JSON-able dict; see `evaluate_student`.
"""

from __future__ import annotations

import math
from pathlib import Path

from kdsweep.distill.config import TrainConfig, load_config
from kdsweep.distill.data.batches import HeldOut, heldout_from_file, heldout_split, train_unigram
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.eval.generation import aa_kl_natural, generation_throughput
from kdsweep.distill.eval.metrics import compression, count_params, score_heldout
from kdsweep.distill.inputs import check_teacher_tokenizer
from kdsweep.distill.models import check_vocab, load_saved_student, load_teacher, load_tokenizer, resolve_teacher
from kdsweep.distill.runtime import resolve_runtime
from kdsweep.distill.teacher.source import LiveTeacher, TeacherSource

# Generation throughput is measured at one fixed setting so numbers compare across runs.
THROUGHPUT_BATCH = 8
THROUGHPUT_TOKENS = 64


def evaluate_student(student, teacher: TeacherSource, tokenizer, heldout: HeldOut, *, cfg, runtime,
                     generation: bool = True, unigram=None) -> dict:
    """ppl, ppl_teacher, ppl_ratio, kl_teacher, ece (+accuracy, confidence, bins), compression; with
    `generation`, also aa_kl_natural / aa_kl_uniprot (their sample size, length-cap share and natural
    resampling floor) and generation tokens/s; with `unigram` ((V,) log-probabilities fitted on the
    train tokens: `distill.data.batches.unigram_log_probs`), the composition floor on the same tokens; plus
    what was scored. `teacher`: the live model or a teacher cache (distill/teacher/source.py).

    Student and teacher are scored at the same precision: both under the runtime's autocast.
    """
    n_pos = student.config.n_positions
    max_tokens = min(cfg.max_eval_tokens or n_pos, n_pos, teacher.config.n_positions)
    teacher_logits = teacher.heldout_logits_fn(heldout)

    def teacher_fn(ids, mask, proteins):
        with runtime.autocast():
            return teacher_logits(ids, mask, proteins)

    out = score_heldout(
        student,
        teacher_fn,
        heldout.batches(cfg.eval_batch_size, max_tokens, tokenizer.eos_token_id),
        device=runtime.device,
        autocast_dtype=runtime.autocast_dtype,
        unigram=unigram,
    )
    t_params, s_params = teacher.n_params, count_params(student)
    out.update({"teacher_params": t_params, "student_params": s_params, "compression": compression(t_params, s_params),
                "max_eval_tokens": max_tokens, "n_proteins": len(heldout), "precision": runtime.precision})
    if generation:
        gen_tokens = min(cfg.gen_max_new_tokens or n_pos - 1, n_pos - 1)
        out.update(aa_kl_natural(student, tokenizer, heldout.sequences, seed=cfg.seed,
                                 min_residues=cfg.gen_min_residues, max_new_tokens=gen_tokens,
                                 batch_size=cfg.gen_batch_size, device=runtime.device))
        speed = generation_throughput(student, batch_size=THROUGHPUT_BATCH,
                                      new_tokens=min(THROUGHPUT_TOKENS, n_pos - 1), device=runtime.device,
                                      autocast_dtype=runtime.autocast_dtype, seed=cfg.seed)
        out["gen_tokens_per_s"] = speed["tokens_per_s"]
        out["gen_setting"] = {k: speed[k] for k in ("batch_size", "new_tokens", "device", "param_dtype",
                                                      "autocast_dtype")}
    return out


def headline(metrics: dict) -> str:
    """One line a person reads first: the numbers the issue asks `train` to print."""
    acc = metrics.get("accuracy", math.nan)
    flag = " (accuracy 0: ECE = mean confidence)" if metrics.get("accuracy_is_zero") else ""
    return (
        f"ppl {metrics['ppl']:.3f} (teacher {metrics['ppl_teacher']:.3f})  ppl_ratio {metrics['ppl_ratio']:.3f}  "
        f"kl_teacher {metrics['kl_teacher']:.4f}  ece {metrics['ece']:.4f} with accuracy {acc:.3f}{flag}  "
        f"aa_kl_natural {metrics['aa_kl_natural']:.4f} (natural proteins at {metrics['aa_gen_residues']} residues: "
        f"{metrics.get('aa_kl_floor_mean', math.nan):.4f}, 95th pct {metrics.get('aa_kl_floor_p95', math.nan):.4f})  "
        f"compression {metrics['compression']:.1f}x" + floor_text(metrics)
    )


def floor_text(metrics: dict) -> str:
    """The unigram floor, as `headline` prints it (empty when it was not measured)."""
    if "unigram_ppl" not in metrics:
        return ""
    flag = "  PREDICTS COMPOSITION ONLY" if metrics["at_unigram_floor"] else ""
    return (f"\nunigram floor (train token frequencies, same tokens): ppl {metrics['unigram_ppl']:.3f}; student - "
            f"floor {metrics['unigram_gap']:+.4f} nats/token [95 % CI {metrics['unigram_gap_ci95_low']:+.4f}, "
            f"{metrics['unigram_gap_ci95_high']:+.4f}]{flag}")


def evaluate_dirs(student_dir: str, teacher: str, *, data: str | None = None, device: str = "auto") -> dict:
    """`kdsweep evaluate`: load a saved student and a teacher, score the bundled test split
    (or every protein of `data`), with the student's own eval settings if it has them."""
    saved = Path(student_dir) / "kdsweep_config.yaml"
    cfg = load_config(saved) if saved.is_file() else TrainConfig()
    cfg = cfg.replace(device=device)
    rt = resolve_runtime(cfg.precision, cfg.device)
    tokenizer = load_tokenizer(student_dir)
    check_teacher_tokenizer(tokenizer, f"student tokenizer ({student_dir})", resolve_teacher(teacher))
    student = load_saved_student(student_dir, device=rt.device)
    teacher_model = load_teacher(resolve_teacher(teacher), device=rt.device)
    check_vocab(tokenizer, teacher_model.config, student.config, tokenizer_name=f"student tokenizer ({student_dir})")
    unigram = None  # a file of its own has no train split to fit the floor on
    if data is not None:
        heldout = heldout_from_file(data, tokenizer, column=cfg.sequence_column)
    else:
        split = SplitSpec.from_config(cfg)
        heldout = heldout_split("bundled", tokenizer, "test", split=split)
        unigram = train_unigram("bundled", tokenizer, column=cfg.sequence_column, split=split)
    metrics = evaluate_student(student, LiveTeacher(teacher_model, teacher), tokenizer, heldout, cfg=cfg, runtime=rt,
                               unigram=unigram)
    return {**metrics, "student": str(student_dir), "teacher": teacher, "data": data or "bundled:test"}
