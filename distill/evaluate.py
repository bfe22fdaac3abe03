"""Every SPEC §5 metric of a student against its teacher on one held-out set.

Used at the end of `kdsweep train` (test split), by `kdsweep evaluate`, and by
replicate trials. The result is a flat JSON-able dict; see `evaluate_student`.
"""

from __future__ import annotations

import math
from pathlib import Path

from distill.config import TrainConfig, load_config
from distill.data import HeldOut, heldout_from_file, heldout_split
from distill.generation import aa_kl_natural, generation_throughput
from distill.metrics import compression, count_params, score_heldout
from distill.models import check_vocab, load_teacher, load_tokenizer, resolve_teacher, teacher_logits
from distill.splits import SplitSpec

# Generation throughput is measured at one fixed setting so numbers compare across runs.
THROUGHPUT_BATCH = 8
THROUGHPUT_TOKENS = 64


def evaluate_student(student, teacher, tokenizer, heldout: HeldOut, *, cfg, runtime) -> dict:
    """ppl, ppl_teacher, ppl_ratio, kl_teacher, ece (+accuracy, confidence, bins), aa_kl_natural,
    aa_kl_uniprot, compression, generation tokens/s; plus what was scored."""
    n_pos = student.config.n_positions
    max_tokens = min(cfg.max_eval_tokens or n_pos, n_pos, teacher.config.n_positions)
    scored = score_heldout(
        student,
        lambda ids, mask: teacher_logits(teacher, ids, mask),
        heldout.batches(cfg.eval_batch_size, max_tokens, tokenizer.eos_token_id),
        device=runtime.device,
        autocast_dtype=runtime.autocast_dtype,
    )
    gen_tokens = min(cfg.gen_max_new_tokens, n_pos - 1)
    aa = aa_kl_natural(student, tokenizer, heldout.sequences, seed=cfg.seed, num_sequences=cfg.gen_num_sequences,
                       max_new_tokens=gen_tokens, device=runtime.device)
    speed = generation_throughput(student, batch_size=THROUGHPUT_BATCH, new_tokens=min(THROUGHPUT_TOKENS, n_pos - 1),
                                  device=runtime.device, autocast_dtype=runtime.autocast_dtype, seed=cfg.seed)
    t_params, s_params = count_params(teacher), count_params(student)
    return {
        **scored,
        **aa,
        "gen_tokens_per_s": speed["tokens_per_s"],
        "gen_setting": {k: speed[k] for k in ("batch_size", "new_tokens", "device", "param_dtype", "autocast_dtype")},
        "teacher_params": t_params,
        "student_params": s_params,
        "compression": compression(t_params, s_params),
        "max_eval_tokens": max_tokens,
        "n_proteins": len(heldout),
    }


def headline(metrics: dict) -> str:
    """One line a person reads first: the numbers the issue asks `train` to print."""
    acc = metrics.get("accuracy", math.nan)
    flag = " (accuracy 0: ECE = mean confidence)" if metrics.get("accuracy_is_zero") else ""
    return (
        f"ppl {metrics['ppl']:.3f} (teacher {metrics['ppl_teacher']:.3f})  ppl_ratio {metrics['ppl_ratio']:.3f}  "
        f"kl_teacher {metrics['kl_teacher']:.4f}  ece {metrics['ece']:.4f} with accuracy {acc:.3f}{flag}  "
        f"aa_kl_natural {metrics['aa_kl_natural']:.4f}  compression {metrics['compression']:.1f}x"
    )


def evaluate_dirs(student_dir: str, teacher: str, *, data: str | None = None, device: str = "auto") -> dict:
    """`kdsweep evaluate`: load a saved student and a teacher, score the bundled test split
    (or every protein of `data`), with the student's own eval settings if it has them."""
    from distill.train import resolve_runtime  # training imports this module

    saved = Path(student_dir) / "kdsweep_config.yaml"
    cfg = load_config(saved) if saved.is_file() else TrainConfig()
    cfg = cfg.replace(device=device)
    rt = resolve_runtime(cfg)
    tokenizer = load_tokenizer(student_dir)
    student = load_teacher(student_dir, device=rt.device, kind="student")
    teacher_model = load_teacher(resolve_teacher(teacher), device=rt.device)
    check_vocab(tokenizer, teacher_model.config, student.config, tokenizer_name=f"student tokenizer ({student_dir})")
    if data is not None:
        heldout = heldout_from_file(data, tokenizer, column=cfg.sequence_column)
    else:
        heldout = heldout_split("bundled", tokenizer, "test", split=SplitSpec.from_config(cfg))
    metrics = evaluate_student(student, teacher_model, tokenizer, heldout, cfg=cfg, runtime=rt)
    return {**metrics, "student": str(student_dir), "teacher": teacher, "data": data or "bundled:test"}
