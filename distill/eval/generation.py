"""Sampling proteins from a model: amino-acid composition KL and generation throughput
(method §5).

Sampling follows ProtGPT2's recipe: every sample starts from the prompt "<|endoftext|>"
(one token, bos = eos) and is drawn with repetition penalty 1.2, then top-k 950, until the
next <|endoftext|>, with one change: the end token is never penalised. Hugging Face's
penalty divides the logit of every token already in the sequence, and the prompt *is* the end
token, so from the first step the model's wish to end was cut by 1.2x; on a 27-token
vocabulary that kept demo samples running to the length cap (`RepetitionPenaltyExceptEnd`;
method §5: samples end where the model ends them). The share of samples that hit the cap is
reported (`aa_gen_capped_share`).

Sampling runs under a fixed seed in a forked RNG, so the same seed, batch size and device
give the same proteins, and the caller's RNG stream (e.g. a training run's) is left exactly
as it was.

The noise floor of aa_kl_natural (`natural_resampling_floor`) is what natural proteins score:
held-out proteins resampled whole, with replacement, to the sampled residue count, against the
held-out composition. Residues of one protein are not independent draws (a protein has its own
composition), so this is several times the i.i.d. figure (K - 1) / 2N (method §5).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopKLogitsWarper

from kdsweep.distill.eval.metrics import STANDARD_AA, UNIPROT_BACKGROUND, aa_composition, aa_counts, aa_kl
from kdsweep.distill.runtime import autocast, eval_mode

PROTGPT2_TOP_K = 950
PROTGPT2_REPETITION_PENALTY = 1.2

_NON_LETTERS = re.compile(r"[^A-Za-z]")
FLOOR_RESAMPLES = 200  # resamples of the natural proteins per aa_kl floor: mean and 95th percentile


class RepetitionPenaltyExceptEnd(LogitsProcessor):
    """Hugging Face's repetition penalty (a logit x of a token already in the sequence becomes x / p
    if x > 0, else x * p) on every token but `end_id`: the prompt is the end token, and penalising it
    would keep samples from ending where the model ends them."""

    def __init__(self, penalty: float, end_id: int):
        self.penalty, self.end_id = penalty, end_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # input_ids (B, T) so far, scores (B, V) for the next token
        seen = torch.gather(scores, 1, input_ids)  # (B, T)
        penalised = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        out = scores.scatter(1, input_ids, penalised)
        out[:, self.end_id] = scores[:, self.end_id]
        return out


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs for the duration of the block, then restore them."""
    if device.type == "cpu":
        forked = torch.random.fork_rng(devices=[])  # the CPU RNG is always forked
    else:
        # torch.manual_seed seeds every device of the type, so fork them all.
        n_devices = torch.get_device_module(device.type).device_count()
        forked = torch.random.fork_rng(devices=range(n_devices), device_type=device.type)
    with forked:
        torch.manual_seed(seed)
        yield


def _check_length(model: torch.nn.Module, new_tokens: int) -> None:
    """The prompt token plus `new_tokens` must fit the model's position embeddings."""
    if new_tokens < 1:
        raise ValueError(f"the number of new tokens must be at least 1, got {new_tokens}")
    n_positions = getattr(model.config, "max_position_embeddings", None)
    if n_positions is not None and new_tokens + 1 > n_positions:
        raise ValueError(
            f"{new_tokens} new tokens + 1 prompt token exceed the model's {n_positions} positions"
        )


def _sample(
    model: torch.nn.Module,
    *,
    prompt_id: int,
    eos_id: int,
    batch_size: int,
    max_new_tokens: int,
    min_new_tokens: int,
    top_k: int,
    repetition_penalty: float,
    device: torch.device,
) -> torch.Tensor:
    """One `generate` call from a (batch_size, 1) prompt; returns (batch_size, 1 + T) ids
    with T ≤ max_new_tokens, rows that stopped early padded with eos. The penalty, then top-k, as
    Hugging Face orders them, but the penalty spares the end token (`RepetitionPenaltyExceptEnd`)."""
    prompt = torch.full((batch_size, 1), prompt_id, dtype=torch.long, device=device)
    processors = LogitsProcessorList([RepetitionPenaltyExceptEnd(repetition_penalty, eos_id),
                                      TopKLogitsWarper(min(top_k, model.config.vocab_size))])
    return model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        top_k=0,  # no stock top-k or penalty: `processors` hold both (a second copy would be refused)
        repetition_penalty=1.0,
        logits_processor=processors,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


@dataclass(frozen=True)
class Samples:
    proteins: list[str]  # letters only, upper case; "" for a sample that ended at once
    capped: int  # samples that reached max_new_tokens without ending (cut at the length cap)

    @property
    def capped_share(self) -> float:
        return self.capped / len(self.proteins) if self.proteins else math.nan


def sample_proteins(model: torch.nn.Module, tokenizer, **kwargs) -> list[str]:
    """`draw_samples(...).proteins`."""
    return draw_samples(model, tokenizer, **kwargs).proteins


def draw_samples(
    model: torch.nn.Module,
    tokenizer,
    *,
    max_new_tokens: int,
    seed: int,
    device: torch.device | str,
    num_sequences: int | None = None,
    min_residues: int | None = None,
    top_k: int = PROTGPT2_TOP_K,
    repetition_penalty: float = PROTGPT2_REPETITION_PENALTY,
    batch_size: int = 32,
) -> Samples:
    """Sample proteins with ProtGPT2's recipe, in batches of `batch_size`.

    Give exactly one of `num_sequences` (that many proteins) or `min_residues` (batches
    until the proteins hold at least that many standard residues, or until
    ceil(min_residues / batch_size) batches have been drawn: a model that keeps ending its
    samples at once cannot loop forever; the caller sees the shortfall in the count).
    Each sample is cut at its first <|endoftext|> (or after `max_new_tokens` tokens),
    decoded, and stripped of everything but letters (newlines, special tokens), then
    upper-cased; one that ended at once is "". `model` must already be on `device`; it
    runs in eval mode (its mode is restored). Same seed, batch size and device => same
    proteins.
    """
    if (num_sequences is None) == (min_residues is None):
        raise ValueError("give exactly one of num_sequences and min_residues")
    device = torch.device(device)
    _check_length(model, max_new_tokens)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos token (ProtGPT2's is <|endoftext|>)")
    prompt_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_id
    max_batches = math.ceil((num_sequences or min_residues) / batch_size)
    proteins: list[str] = []
    residues = capped = 0
    with _seeded(seed, device), eval_mode(model), torch.no_grad():
        for _ in range(max_batches):
            size = batch_size if num_sequences is None else min(batch_size, num_sequences - len(proteins))
            ids = _sample(
                model, prompt_id=prompt_id, eos_id=eos_id, batch_size=size,
                max_new_tokens=max_new_tokens, min_new_tokens=0, top_k=top_k,
                repetition_penalty=repetition_penalty, device=device,
            )  # (b, 1 + T)
            batch = []
            for row in ids[:, 1:].tolist():
                # A protein ends at its first <|endoftext|> (generate pads finished rows
                # with it), whatever the tokenizer's special-token flags say.
                if eos_id in row:
                    row = row[:row.index(eos_id)]
                else:
                    capped += 1  # a whole max_new_tokens row without an end: cut at the cap
                text = tokenizer.decode(row, skip_special_tokens=True)
                batch.append(_NON_LETTERS.sub("", text).upper())
            proteins += batch
            residues += int(aa_counts(batch).sum())
            if min_residues is not None and residues >= min_residues:
                break
    return Samples(proteins, capped)


def expected_aa_kl_bias(n_residues: int, n_categories: int = len(STANDARD_AA)) -> float:
    """E[KL(p_hat || q)] for a sampler whose composition is exactly q, from n_residues draws:
    about (K - 1) / (2 N) nats (the chi-square limit of 2N * KL). aa_kl_natural values near this
    are indistinguishable from a perfect composition at that sample size."""
    return (n_categories - 1) / (2 * n_residues)


def natural_resampling_floor(heldout_sequences: Sequence[str], n_residues: int, *, n_resamples: int = FLOOR_RESAMPLES,
                             seed: int = 0) -> dict:
    """The noise floor of aa_kl_natural at `n_residues` (method §5): held-out proteins drawn whole, with
    replacement, until they hold at least `n_residues` standard residues (the sampler's own stopping
    rule), scored like a sample against the composition of all of them; `n_resamples` times.

    Returns `aa_kl_floor_mean` and `aa_kl_floor_p95` (of one natural resample), and the 95th percentiles
    of |a - b| and |a - b - c + d| over independent resamples (`aa_kl_floor_diff_p95`,
    `aa_kl_floor_interaction_p95`): how far apart two (four) arms' values land by sampling alone.
    """
    counts = np.stack([aa_counts([s]) for s in heldout_sequences])  # (P, 20)
    length = counts.sum(1)  # (P,)
    q = counts.sum(0) / counts.sum()  # (20,)
    rng = np.random.default_rng(seed)
    draw = max(8, int(3 * n_residues / max(length.mean(), 1)))  # proteins per try: ~3x what N needs
    kls = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, len(counts), draw)
        while length[idx].sum() < n_residues:  # rare: keep drawing until the residues suffice
            idx = np.concatenate([idx, rng.integers(0, len(counts), draw)])
        stop = int(np.searchsorted(np.cumsum(length[idx]), n_residues)) + 1  # first prefix holding >= N
        drawn = counts[idx[:stop]].sum(0)  # (20,)
        kls[i] = aa_kl(drawn / drawn.sum(), q)
    quarter = n_resamples // 4
    a, b, c, d = (kls[k * quarter:(k + 1) * quarter] for k in range(4))
    return {"aa_kl_floor_mean": float(kls.mean()), "aa_kl_floor_p95": float(np.percentile(kls, 95)),
            "aa_kl_floor_diff_p95": float(np.percentile(np.abs(np.concatenate([a - b, c - d])), 95)),
            "aa_kl_floor_interaction_p95": float(np.percentile(np.abs(a - b - c + d), 95)),
            "aa_kl_floor_resamples": n_resamples}


def aa_kl_natural(
    model: torch.nn.Module,
    tokenizer,
    heldout_sequences: Sequence[str],
    *,
    seed: int,
    min_residues: int,
    max_new_tokens: int,
    device: torch.device | str,
    batch_size: int = 32,
    top_k: int = PROTGPT2_TOP_K,
    repetition_penalty: float = PROTGPT2_REPETITION_PENALTY,
) -> dict:
    """Amino-acid composition KL of sampled full-length proteins (method §5).

    Samples until at least `min_residues` standard residues (see `sample_proteins`).
    Returns `aa_kl_natural` = KL(p_gen || held-out composition), `aa_kl_uniprot` =
    KL(p_gen || UNIPROT_BACKGROUND), `aa_gen_residues` and `aa_gen_sequences` (what was
    sampled), `aa_gen_capped_share` (samples cut at `max_new_tokens` without ending), the
    natural resampling floor at that residue count (`natural_resampling_floor`: the noise floor
    tables read aa_kl_natural against), `aa_kl_expected_bias` ((K - 1) / 2N, the i.i.d.-residue
    figure, kept for reference: about 4x too small for proteins) and `aa_note` (None, or what is
    wrong: no standard residue at all, or fewer than `min_residues`). A KL is +inf if the
    held-out split lacks an amino acid that was generated.
    """
    q_natural = aa_composition(heldout_sequences)  # (20,); raises if no residues
    samples = draw_samples(
        model, tokenizer, min_residues=min_residues, max_new_tokens=max_new_tokens,
        seed=seed, top_k=top_k, repetition_penalty=repetition_penalty, device=device,
        batch_size=batch_size,
    )
    proteins = samples.proteins
    n_residues = int(aa_counts(proteins).sum())
    sampled = {"aa_gen_residues": n_residues, "aa_gen_sequences": len(proteins),
               "aa_gen_capped_share": samples.capped_share, "aa_gen_max_new_tokens": max_new_tokens}
    if n_residues == 0:
        return {"aa_kl_natural": math.nan, "aa_kl_uniprot": math.nan, "aa_kl_expected_bias": math.nan, **sampled,
                "aa_note": f"no standard amino-acid residue in {len(proteins)} sampled sequences"}
    p_gen = aa_composition(proteins)  # (20,)
    short = n_residues < min_residues
    return {
        "aa_kl_natural": aa_kl(p_gen, q_natural),
        "aa_kl_uniprot": aa_kl(p_gen, UNIPROT_BACKGROUND),
        "aa_kl_expected_bias": expected_aa_kl_bias(n_residues),
        **natural_resampling_floor(heldout_sequences, n_residues, seed=seed),
        **sampled,
        "aa_note": (f"only {n_residues} standard residues in {len(proteins)} samples (asked for {min_residues}): "
                    "the samples end early") if short else None,
    }


def _dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (JSON-friendly)."""
    return str(dtype).removeprefix("torch.")


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timing covers the work."""
    if device.type != "cpu":
        torch.get_device_module(device.type).synchronize(device)


def generation_throughput(
    model: torch.nn.Module,
    *,
    batch_size: int,
    new_tokens: int,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    warmup_tokens: int = 16,
) -> dict:
    """Generated tokens per second at a fixed batch size, length and dtype.

    Samples with ProtGPT2's settings and `min_new_tokens = max_new_tokens = new_tokens`,
    so every row is exactly `new_tokens` long whatever the model emits. One untimed
    warm-up call (same batch size, `warmup_tokens` tokens) comes first. `model` must
    already be on `device`; weights keep their dtype (`param_dtype`), computation runs
    under `torch.autocast(autocast_dtype)` if one is given.

    Returns tokens_per_s, seconds, batch_size, new_tokens, device, param_dtype,
    autocast_dtype.
    """
    device = torch.device(device)
    _check_length(model, new_tokens)
    eos_id = model.config.eos_token_id
    prompt_id = model.config.bos_token_id if model.config.bos_token_id is not None else eos_id
    if prompt_id is None:
        raise ValueError("the model config has neither bos_token_id nor eos_token_id")

    def run(n_tokens: int) -> torch.Tensor:
        return _sample(
            model, prompt_id=prompt_id, eos_id=eos_id, batch_size=batch_size,
            max_new_tokens=n_tokens, min_new_tokens=n_tokens, top_k=PROTGPT2_TOP_K,
            repetition_penalty=PROTGPT2_REPETITION_PENALTY, device=device,
        )

    with _seeded(seed, device), eval_mode(model), torch.no_grad(), \
            autocast(device, autocast_dtype):
        run(min(warmup_tokens, new_tokens))
        _synchronize(device)
        start = time.perf_counter()
        ids = run(new_tokens)  # (batch_size, 1 + new_tokens)
        _synchronize(device)
        seconds = time.perf_counter() - start
    if ids.shape != (batch_size, 1 + new_tokens):
        raise RuntimeError(f"generate returned shape {tuple(ids.shape)}, "
                           f"expected {(batch_size, 1 + new_tokens)}")
    return {
        "tokens_per_s": batch_size * new_tokens / seconds,
        "seconds": seconds,
        "batch_size": batch_size,
        "new_tokens": new_tokens,
        "device": str(device),
        "param_dtype": _dtype_name(next(model.parameters()).dtype),
        "autocast_dtype": None if autocast_dtype is None else _dtype_name(autocast_dtype),
    }
