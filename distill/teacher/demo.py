"""The CPU demo teacher: a small GPT-2 trained on the bundled proteins.

ProtGPT2 (774M parameters) cannot run on a 2-core laptop, so the demo sweep
distills this one instead. It uses a character-level amino-acid tokenizer (a
real `PreTrainedTokenizerFast`, 27 tokens: `<|endoftext|>` = 0 as bos/eos/unk
like ProtGPT2, newline, and the 25 IUPAC letters), the same ProtGPT2 text
format, and the bundled data's default split (the cluster split, method §2), so everything
downstream runs unchanged. It is trained on that split's train set only, so it saw no val or
test protein of the demo (its teacher exposure is 0; `train_record.json` says which split).

Rebuild (reproducible from the seed; the committed weights came from this command):

    kdsweep demo-teacher --out distill/assets/demo-teacher

Its figures (held-out NLL per residue against the unigram entropy of the data)
are written to `demo_teacher.json` beside the weights and to docs/benchmarks.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kdsweep.distill.data.batches import prepare_data
from kdsweep.distill.eval.metrics import bootstrap_gap, student_ppl
from kdsweep.distill.files.atomic import write_atomic
from kdsweep.distill.files.numbers import dumps
from kdsweep.distill.optim import make_optimizer, make_scheduler
from kdsweep.distill.seeding import seed_everything

AA_LETTERS = "ACDEFGHIKLMNPQRSTVWYBXZUO"  # 20 standard first, then B X Z U O
EOS = "<|endoftext|>"

# Architecture and budget of the committed teacher (about 0.86M parameters). n_positions equals
# the training block: positions never trained would make held-out scoring of long proteins
# (truncated at n_positions) meaningless.
DEMO_ARCH = {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_positions": 512}
# 2000 steps of 16 x 512 tokens: on the hash split 5000 steps bought only 0.02 nats per residue more at 2.5x the
# time (docs/benchmarks.md, "Demo teacher").
DEMO_TRAIN = {"steps": 2000, "batch_size": 16, "block_size": 512, "lr": 3e-3, "warmup_steps": 100, "seed": 0}


def build_aa_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over eos, newline and the 25 IUPAC letters."""
    vocab = {EOS: 0, "\n": 1, **{c: i + 2 for i, c in enumerate(AA_LETTERS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    # Split every character (newline included) into its own token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def _letter_frequencies(sequences: list[str]) -> tuple[list[str], np.ndarray]:
    """The residue letters that occur in `sequences` and their frequencies."""
    codes, counts = np.unique(np.frombuffer("".join(sequences).encode(), dtype=np.uint8), return_counts=True)
    return [chr(c) for c in codes], counts / counts.sum()


def unigram_entropy(sequences: list[str]) -> float:
    """Entropy (nats) of the residue frequencies: the NLL of a model that knows only composition."""
    p = _letter_frequencies(sequences)[1]
    return float(-(p * np.log(p)).sum())


def training_data_record(info: dict) -> dict:
    """What the teacher trained on, for its exposure (distill/data/exposure.py reads it back): the data and
    the split whose train set it saw."""
    return {"data": "bundled", "part": "train", "data_sha256": info["data_sha256"],
            **{k: info[k] for k in ("split_method", "split", "cluster_identity", "cluster_coverage")}}


def train_demo_teacher(out_dir: str | Path, *, steps: int = DEMO_TRAIN["steps"], log=print) -> Path:
    """Train the demo teacher on the bundled train split; save weights + tokenizer to `out_dir`."""
    cfg = DEMO_TRAIN | {"steps": steps}
    seed_everything(cfg["seed"])
    tokenizer = build_aa_tokenizer()
    data = prepare_data("bundled", tokenizer, block_size=cfg["block_size"])
    blocks = data.train_blocks  # (N, block)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0, activation_function="gelu_new",
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **DEMO_ARCH)
    )
    opt = make_optimizer(model, cfg["lr"])
    sched = make_scheduler(opt, cfg["warmup_steps"], steps)
    gen = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    model.train()
    for step in range(steps):
        x = blocks[torch.randint(len(blocks), (cfg["batch_size"],), generator=gen)]  # (B, block)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            log(f"demo teacher step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_atomic(out / "train_record.json", dumps(
        {"train": cfg, "arch": DEMO_ARCH, "data": training_data_record(data.info),
         "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__},
        indent=2) + "\n")
    return out


def composition_nll(sequences: list[str], tokenizer) -> torch.Tensor:
    """(V,) NLL of each token under the residue frequencies of `sequences`, -log p(letter); 0 for
    tokens that are not residue letters or never occur (they are never scored as residues)."""
    letters, p = _letter_frequencies(sequences)
    out = torch.zeros(len(tokenizer), dtype=torch.float64)
    out[tokenizer.convert_tokens_to_ids(letters)] = torch.from_numpy(-np.log(p))
    return out


@torch.no_grad()
def paired_residue_nll(model, batches, comp_nll: torch.Tensor, residue_ids: torch.Tensor) -> dict[str, np.ndarray]:
    """Per protein, over the scored positions whose next token is a residue letter (like for like
    with the unigram entropy, which has no newline and no eos): the model's summed NLL, the
    composition-only model's summed NLL and the number of such positions. Each (N,), batch order."""
    model_sum, comp_sum, count = [], [], []
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]  # (B, L)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)  # (B, L-1, V)
        target = ids[:, 1:]  # (B, L-1)
        keep = mask[:, 1:].bool() & torch.isin(target, residue_ids)  # (B, L-1)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        model_sum.append(torch.where(keep, nll.double(), 0.0).sum(1))
        comp_sum.append(torch.where(keep, comp_nll[target], 0.0).sum(1))
        count.append(keep.sum(1))
    return {k: torch.cat(v).double().numpy() for k, v in
            (("model", model_sum), ("composition", comp_sum), ("count", count))}


def measure_demo_teacher(teacher_dir: str | Path) -> dict:
    """Held-out NLL per residue of a saved demo teacher against the data's unigram entropy."""
    teacher_dir = Path(teacher_dir)
    model = GPT2LMHeadModel.from_pretrained(teacher_dir).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    data = prepare_data("bundled", tokenizer, block_size=DEMO_TRAIN["block_size"])
    n_pos = model.config.n_positions

    def batches(split):
        return split.batches(16, n_pos, tokenizer.eos_token_id)

    val, test = (student_ppl(model, batches(split), device="cpu") for split in (data.val, data.test))
    residue_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(AA_LETTERS)))
    paired = paired_residue_nll(model, batches(data.test), composition_nll(data.test.sequences, tokenizer), residue_ids)
    figures = {
        "test_nll_residue_targets": float(paired["model"].sum() / paired["count"].sum()),
        "val_nll_per_residue": val["nll_per_residue"],
        "test_nll_per_residue": test["nll_per_residue"],
        "test_nll_per_token": test["nll_per_token"],
        "unigram_entropy_nats": unigram_entropy(data.test.sequences),
        "residue_targets_gap_to_composition": bootstrap_gap(paired["model"] - paired["composition"], paired["count"]),
        "params": sum(p.numel() for p in model.parameters()),
        **json.loads((teacher_dir / "train_record.json").read_text()),
    }
    write_atomic(teacher_dir / "demo_teacher.json", dumps(figures, indent=2) + "\n")
    return figures


def build_demo_teacher(out_dir: str | Path, *, steps: int = DEMO_TRAIN["steps"], log=print) -> dict:
    """`kdsweep demo-teacher`: train, save, then measure and record the figures."""
    figures = measure_demo_teacher(train_demo_teacher(out_dir, steps=steps, log=log))
    log(dumps(figures, indent=2))
    if not figures["residue_targets_gap_to_composition"]["ci95_high"] < 0:
        log("WARNING: the demo teacher is not significantly better than the amino-acid composition")
    return figures
