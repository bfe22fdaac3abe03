"""Held-out metrics of method §5: perplexity, KL to the teacher, calibration, compression
and amino-acid composition.

Scoring convention (shared by every metric here). A batch holds one protein per row,
right-padded: `input_ids` (B, L), `attention_mask` (B, L) with 1 on real tokens, and
`n_residues` (B,) = amino-acid residues in that (possibly truncated) protein. Logits at
position i predict `input_ids[i + 1]`; position i is *scored* iff
`attention_mask[i + 1] == 1`. A row with n real tokens therefore has n − 1 scored
positions (**fix**: the study counted L, not L − 1, and scored a position past the end).

Everything is streamed: `HeldOutScorer.update` turns one batch into a handful of sums
(fp32 within a chunk of positions, float64 across chunks and batches), so no logits are
kept between batches and at most a few (chunk, V) fp32 tensors exist at once.

The teacher is only ever seen through `teacher_logits_fn(input_ids, attention_mask, proteins) ->
(B, L, V)` (`proteins`: the batch's (B,) protein indices, or None), so a teacher cache can
stand in for the live model (distill/teacher/source.py).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from kdsweep.distill.runtime import autocast, eval_mode

# (input_ids (B, L), attention_mask (B, L), protein indices (B,) or None) -> (B, L, V) logits
TeacherLogitsFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

# (chunk positions × V) elements per fp32 temporary: 2**24 floats = 64 MiB, i.e. 333
# positions at ProtGPT2's V = 50,257. A chunk needs about six such temporaries.
DEFAULT_CHUNK_ELEMENTS = 2**24
N_ECE_BINS = 10

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
# UniProtKB/Swiss-Prot amino-acid composition, release 2013_04, in percent
# (shared/data/SOURCES.md). It sums to 99.89, hence the renormalization below.
_SWISSPROT_PERCENT = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75,
    "G": 7.07, "H": 2.27, "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86,
    "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}
# (20,) background frequencies in STANDARD_AA order, summing to 1.
UNIPROT_BACKGROUND = np.array([_SWISSPROT_PERCENT[a] for a in STANDARD_AA], dtype=np.float64)
UNIPROT_BACKGROUND /= UNIPROT_BACKGROUND.sum()
UNIPROT_BACKGROUND.setflags(write=False)


# --------------------------------------------------------------------------------------
# Streaming accumulators
# --------------------------------------------------------------------------------------


def _exp(x: float) -> float:
    """exp that saturates to inf instead of raising (a diverged model has huge NLL)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


class _Calibration:
    """Per-bin sums for ECE over `n_bins` equal-width confidence bins.

    Bin b holds confidences in [b/n, (b+1)/n); a confidence of exactly 1.0 goes in the
    last bin, so every scored position lands in exactly one bin.
    """

    def __init__(self, n_bins: int):
        self.n_bins = n_bins
        self.count = np.zeros(n_bins, dtype=np.int64)
        self.correct = np.zeros(n_bins, dtype=np.int64)
        self.conf_sum = np.zeros(n_bins, dtype=np.float64)

    def add(self, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        """log_probs: (C, V) fp32 log-softmax; targets: (C,) next-token ids."""
        max_log_prob, pred = log_probs.max(dim=-1)  # (C,), (C,)
        conf = max_log_prob.exp()  # (C,) = max probability
        # In float64 the product conf·n_bins cannot round a confidence just below an
        # edge (e.g. the fp32 number nearest below 0.3) up into the next bin.
        bins = (conf.double() * self.n_bins).floor().long().clamp_(0, self.n_bins - 1)
        correct = (pred == targets).double()
        # (3, n_bins): one transfer to the host per chunk.
        sums = torch.stack([
            torch.bincount(bins, minlength=self.n_bins).double(),
            torch.bincount(bins, weights=correct, minlength=self.n_bins),
            torch.bincount(bins, weights=conf.double(), minlength=self.n_bins),
        ]).cpu().numpy()
        self.count += sums[0].round().astype(np.int64)
        self.correct += sums[1].round().astype(np.int64)
        self.conf_sum += sums[2]

    def summary(self) -> dict:
        """accuracy, confidence, ece and the per-bin table (empty bins: None)."""
        n = int(self.count.sum())
        table = []
        ece = 0.0
        for b in range(self.n_bins):
            count = int(self.count[b])
            acc = self.correct[b] / count if count else None
            conf = self.conf_sum[b] / count if count else None
            if count:
                ece += count / n * abs(acc - conf)
            table.append({
                "lo": b / self.n_bins,
                "hi": (b + 1) / self.n_bins,
                "count": count,
                "accuracy": None if acc is None else float(acc),
                "confidence": None if conf is None else float(conf),
            })
        return {
            "accuracy": float(self.correct.sum() / n),
            "confidence": float(self.conf_sum.sum() / n),
            "ece": float(ece),
            "ece_bins": table,
        }


# --------------------------------------------------------------------------------------
# The unigram (composition) floor
# --------------------------------------------------------------------------------------


def bootstrap_gap(diff: np.ndarray, count: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Per-token mean of a paired per-protein NLL difference (sums `diff`, positions `count`, both
    (N,)), with a 95 % interval from resampling proteins, and the share of proteins where it is < 0."""
    idx = np.random.default_rng(seed).integers(0, len(diff), (n_boot, len(diff)))  # (n_boot, N)
    boots = diff[idx].sum(1) / np.maximum(count[idx].sum(1), 1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"gap": float(diff.sum() / count.sum()), "ci95_low": float(lo), "ci95_high": float(hi),
            "share_of_proteins_better": float((diff < 0).mean())}


class HeldOutScorer:
    """Accumulates the held-out metrics of method §5 over batches of logits.

    `with_teacher=False` scores the student alone (no ppl_ratio / kl_teacher); then
    `update` must get `teacher_logits=None`. `unigram` ((V,) log-probabilities,
    `unigram_log_probs` of the train tokens) adds the composition floor on the same scored
    tokens: its ppl, and the student's per-token gap to it with a 95 % interval over proteins.
    """

    def __init__(
        self,
        *,
        with_teacher: bool = True,
        n_bins: int = N_ECE_BINS,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        unigram: torch.Tensor | None = None,
    ):
        self.with_teacher = with_teacher
        self.unigram = unigram
        # per protein (each batch's rows, in batch order): student NLL sum, unigram NLL sum, positions
        self.rows_student: list[np.ndarray] = []
        self.rows_unigram: list[np.ndarray] = []
        self.rows_count: list[np.ndarray] = []
        self.chunk_elements = chunk_elements
        self.n_sequences = 0
        self.n_tokens = 0
        self.n_residues = 0
        self.nll_sum = 0.0
        self.calibration = _Calibration(n_bins)
        self.nll_sum_teacher = 0.0
        self.kl_sum = 0.0
        self.calibration_teacher = _Calibration(n_bins)

    @torch.no_grad()
    def update(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        n_residues: torch.Tensor,
    ) -> None:
        """Add one batch.

        student_logits, teacher_logits: (B, L, V) in any float dtype, on one device;
        input_ids, attention_mask: (B, L) on that device; n_residues: (B,).
        """
        self._check(student_logits, teacher_logits, input_ids, attention_mask, n_residues)
        # Scored positions, as (row, position) index pairs: position i predicts token i+1.
        rows, cols = attention_mask[:, 1:].bool().nonzero(as_tuple=True)  # (N,), (N,)
        targets = input_ids[rows, cols + 1]  # (N,)
        vocab = student_logits.shape[-1]
        chunk = max(1, self.chunk_elements // vocab)
        row_nll = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)  # (B,)
        for start in range(0, rows.numel(), chunk):
            r, c = rows[start:start + chunk], cols[start:start + chunk]
            y = targets[start:start + chunk]  # (C,)
            # Advanced indexing copies only the C scored rows: (C, V), upcast to fp32.
            log_q = torch.log_softmax(student_logits[r, c].float(), dim=-1)
            nll = -log_q.gather(1, y[:, None]).squeeze(1)  # (C,)
            self.nll_sum += nll.sum().item()
            row_nll.index_add_(0, r, nll.double())
            self.calibration.add(log_q, y)
            if teacher_logits is not None:
                log_p = torch.log_softmax(teacher_logits[r, c].float(), dim=-1)  # (C, V)
                self.nll_sum_teacher += -log_p.gather(1, y[:, None]).sum().item()
                self.calibration_teacher.add(log_p, y)
                p = log_p.exp()
                # KL(p ‖ q) = Σ_v p (log p − log q), with 0·log 0 = 0 where p underflows.
                kl = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1)  # (C,)
                self.kl_sum += kl.sum().item()
                del log_p, p, kl
            del log_q
        if self.unigram is not None:
            uni = -self.unigram[targets.cpu()]  # (N,) float64
            self.rows_student.append(row_nll.cpu().numpy())
            self.rows_unigram.append(torch.zeros(input_ids.shape[0], dtype=torch.float64)
                                     .index_add_(0, rows.cpu(), uni).numpy())
            self.rows_count.append(torch.bincount(rows.cpu(), minlength=input_ids.shape[0]).numpy())
        self.n_sequences += input_ids.shape[0]
        self.n_tokens += rows.numel()
        self.n_residues += int(n_residues.sum())

    def _check(self, student_logits, teacher_logits, input_ids, attention_mask, n_residues):
        if (teacher_logits is not None) != self.with_teacher:
            got = "None" if teacher_logits is None else "a tensor"
            raise ValueError(f"this scorer was built with with_teacher={self.with_teacher}, "
                             f"but update() got teacher_logits={got}")
        b, length = input_ids.shape
        if attention_mask.shape != (b, length) or student_logits.shape[:2] != (b, length):
            raise ValueError(
                f"shape mismatch: input_ids {tuple(input_ids.shape)}, attention_mask "
                f"{tuple(attention_mask.shape)}, student logits {tuple(student_logits.shape)}"
            )
        if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} do not match student "
                f"logits {tuple(student_logits.shape)} (same sequences, same vocabulary)"
            )
        if n_residues.shape != (b,):
            raise ValueError(f"n_residues must have shape ({b},), got {tuple(n_residues.shape)}")
        # Right padding only: a real token after a padded one would be scored against
        # the wrong context.
        if (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
            raise ValueError("attention_mask must be right-padded (1…1 0…0 per row)")

    def result(self) -> dict:
        """The metrics so far. Raises ValueError if no position was scored."""
        if self.n_tokens == 0:
            raise ValueError("no scored positions: every protein had fewer than 2 real tokens")
        nll_per_token = self.nll_sum / self.n_tokens
        out = {
            "n_sequences": self.n_sequences,
            "n_tokens": self.n_tokens,
            "n_residues": self.n_residues,
            "ppl": _exp(nll_per_token),
            "nll_per_token": nll_per_token,
            # Σ NLL / Σ residues charges the NLL of newline and <|endoftext|> tokens to
            # the residues too, so it is an upper bound on the residues' own NLL.
            "nll_per_residue": self.nll_sum / self.n_residues if self.n_residues else math.nan,
        }
        out.update(self.calibration.summary())
        if self.unigram is not None:
            out.update(self._floor(nll_per_token))
        # accuracy == 0 makes ECE equal the mean confidence; the study reported that
        # as calibration without saying so.
        out["accuracy_is_zero"] = bool(self.calibration.correct.sum() == 0)
        if self.with_teacher:
            nll_teacher = self.nll_sum_teacher / self.n_tokens
            teacher_cal = self.calibration_teacher.summary()
            out.update({
                "ppl_teacher": _exp(nll_teacher),
                "nll_per_token_teacher": nll_teacher,
                "nll_per_residue_teacher": (
                    self.nll_sum_teacher / self.n_residues if self.n_residues else math.nan
                ),
                # ppl / ppl_teacher, as exp of the difference so inf/inf cannot occur.
                "ppl_ratio": _exp(nll_per_token - nll_teacher),
                "kl_teacher": self.kl_sum / self.n_tokens,
                "accuracy_teacher": teacher_cal["accuracy"],
                "confidence_teacher": teacher_cal["confidence"],
                "ece_teacher": teacher_cal["ece"],
                "ece_bins_teacher": teacher_cal["ece_bins"],
            })
            if self.unigram is not None:
                # ppl_ratio a composition-only student would score, and how much of the teacher's
                # gain over composition the student recovers (1: all of it, 0: none, < 0: worse).
                out["unigram_ppl_ratio"] = _exp(out["unigram_nll_per_token"] - nll_teacher)
                teacher_gain = out["unigram_nll_per_token"] - nll_teacher
                out["unigram_gain_recovered"] = (-out["unigram_gap"] / teacher_gain if teacher_gain > 0
                                                 else math.nan)
        return out

    def _floor(self, nll_per_token: float) -> dict:
        """The unigram floor on the scored tokens and the student's gap to it (negative: better than
        composition), 95 % interval over proteins; `at_unigram_floor` when that interval does not lie
        wholly below 0: the student is not measurably better than composition (method §5)."""
        student, unigram = np.concatenate(self.rows_student), np.concatenate(self.rows_unigram)
        count = np.concatenate(self.rows_count)
        gap = bootstrap_gap(student - unigram, count)
        nll_unigram = float(unigram.sum() / count.sum())
        return {"unigram_ppl": _exp(nll_unigram), "unigram_nll_per_token": nll_unigram,
                "unigram_gap": nll_per_token - nll_unigram, "unigram_gap_ci95_low": gap["ci95_low"],
                "unigram_gap_ci95_high": gap["ci95_high"], "at_unigram_floor": bool(gap["ci95_high"] >= 0)}


# --------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------


def _run_scorer(
    model: torch.nn.Module,
    teacher_logits_fn: TeacherLogitsFn | None,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None,
    chunk_elements: int,
    unigram: torch.Tensor | None = None,
) -> HeldOutScorer:
    device = torch.device(device)
    scorer = HeldOutScorer(with_teacher=teacher_logits_fn is not None,
                           chunk_elements=chunk_elements, unigram=unigram)
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            input_ids = batch["input_ids"].to(device)  # (B, L)
            attention_mask = batch["attention_mask"].to(device)  # (B, L)
            with autocast(device, autocast_dtype):
                student_logits = model(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).logits  # (B, L, V)
            # The teacher function owns its precision (it may be a cache on the host).
            teacher_logits = (
                teacher_logits_fn(input_ids, attention_mask, batch.get("protein")).to(device)
                if teacher_logits_fn is not None
                else None
            )
            scorer.update(student_logits, teacher_logits, input_ids, attention_mask,
                          batch["n_residues"])
            del student_logits, teacher_logits
    return scorer


def score_heldout(
    student_model: torch.nn.Module,
    teacher_logits_fn: TeacherLogitsFn,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    unigram: torch.Tensor | None = None,
) -> dict:
    """Every held-out metric of method §5 that needs logits, student vs teacher (and, given the
    `unigram` log-probabilities of the train tokens, the composition floor on the same tokens).

    `student_model` must already be on `device`; it runs in eval mode (its previous mode
    is restored) under `torch.autocast(autocast_dtype)` if one is given.
    `teacher_logits_fn(input_ids, attention_mask, proteins)` gets the batch on `device` (and its
    "protein" indices when the batches carry them, else None) and returns (B, L, V) logits (any
    device/dtype). Returns `HeldOutScorer.result()`.
    """
    return _run_scorer(student_model, teacher_logits_fn, batches, device=device,
                       autocast_dtype=autocast_dtype, chunk_elements=chunk_elements, unigram=unigram).result()


def student_ppl(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict:
    """Held-out perplexity of one model at τ = 1, no teacher (early-stopping validation), with its
    calibration (the Pareto view of ppl vs ECE needs both from the same evaluation).

    Returns ppl, nll_per_token, nll_per_residue, ece, accuracy, confidence, n_tokens, n_residues,
    n_sequences.
    """
    result = _run_scorer(model, None, batches, device=device, autocast_dtype=autocast_dtype,
                         chunk_elements=chunk_elements).result()
    keys = ("ppl", "nll_per_token", "nll_per_residue", "ece", "accuracy", "confidence", "n_tokens", "n_residues",
            "n_sequences")
    return {k: result[k] for k in keys}


# --------------------------------------------------------------------------------------
# Size
# --------------------------------------------------------------------------------------


def count_params(model: torch.nn.Module) -> int:
    """Parameter count as HF reports it: `parameters()` yields tied weights once."""
    return sum(p.numel() for p in model.parameters())


def compression(teacher_params: int, student_params: int) -> float:
    """Compression factor = teacher parameters / student parameters."""
    if student_params <= 0:
        raise ValueError(f"student_params must be positive, got {student_params}")
    return teacher_params / student_params


# --------------------------------------------------------------------------------------
# Amino-acid composition
# --------------------------------------------------------------------------------------

_AA_CODES = np.frombuffer(STANDARD_AA.encode("ascii"), dtype=np.uint8)  # (20,)


def aa_counts(sequences: Iterable[str]) -> np.ndarray:
    """(20,) int64 counts of the standard amino acids (STANDARD_AA order).

    Case-insensitive; every other character (B, X, Z, U, O, gaps, newlines) is ignored.
    """
    text = "".join(sequences).upper().encode("ascii", errors="ignore")
    byte_counts = np.bincount(np.frombuffer(text, dtype=np.uint8), minlength=256)  # (256,)
    return byte_counts[_AA_CODES].astype(np.int64)


def aa_composition(sequences: Iterable[str]) -> np.ndarray:
    """(20,) frequencies of the standard amino acids over all `sequences` (sum 1).

    Raises ValueError if there is no standard residue at all.
    """
    counts = aa_counts(sequences)
    total = counts.sum()
    if total == 0:
        raise ValueError("no standard amino-acid residue in the sequences")
    return counts / total


def aa_kl(p_gen: np.ndarray, q: np.ndarray) -> float:
    """KL(p_gen ‖ q) = Σ p_gen · log(p_gen / q) in nats, with 0 · log 0 = 0.

    It is +inf where q is 0 for an amino acid that p_gen has.
    """
    p_gen = np.asarray(p_gen, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p_gen.shape != q.shape:
        raise ValueError(f"shape mismatch: p_gen {p_gen.shape}, q {q.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p_gen > 0, p_gen * np.log(p_gen / q), 0.0)
    return float(terms.sum())
