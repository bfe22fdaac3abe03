import pytest
import torch

from distill.data import heldout_from_file, prepare_data, protgpt2_text
from distill.demo_teacher import build_aa_tokenizer
from distill.errors import DataError
from distill.models import PROTGPT2_TOKENIZER_DIR, load_tokenizer


def test_protgpt2_format():
    seq = "A" * 61 + "K"
    assert protgpt2_text(seq) == "<|endoftext|>\n" + "A" * 60 + "\n" + "AK" + "\n<|endoftext|>"


def test_packing_and_heldout_batches(small_fasta):
    tok = build_aa_tokenizer()
    d = prepare_data(str(small_fasta), tok, block_size=64)
    assert d.train_blocks.shape[1] == 64 and d.train_blocks.dtype == torch.long
    # Packing keeps the token stream: the first block is the first train protein's text start.
    assert d.train_blocks[0, 0].item() == tok.eos_token_id
    batches = list(d.val.batches(4, 1024, tok.eos_token_id))
    assert sum(b["input_ids"].shape[0] for b in batches) == len(d.val)
    for b in batches:
        real = b["attention_mask"].sum(1)
        # char tokenizer: tokens = residues + 2 eos + newlines
        assert torch.all(real > b["n_residues"])
        assert torch.all(b["input_ids"][b["attention_mask"] == 0] == tok.eos_token_id)
    # residues per protein are exact
    total = sum(int(b["n_residues"].sum()) for b in batches)
    assert total == sum(len(s) for s in d.val.sequences)


def test_truncation_counts_kept_residues(small_fasta):
    tok = build_aa_tokenizer()
    d = prepare_data(str(small_fasta), tok, block_size=64)
    b = next(d.val.batches(64, 20, tok.eos_token_id))
    assert b["input_ids"].shape[1] <= 20
    # 20 tokens = eos + newline + 18 residues when the protein is longer than 18
    long_rows = [i for i, s in enumerate(sorted(d.val.sequences, key=len)) if len(s) > 60]
    assert long_rows and all(int(b["n_residues"][i]) == 18 for i in long_rows if i < len(b["n_residues"]))


def test_protgpt2_tokenizer_residue_counts(small_fasta):
    tok = load_tokenizer(str(PROTGPT2_TOKENIZER_DIR))
    held = heldout_from_file(str(small_fasta), tok)
    batches = list(held.batches(8, 1024, tok.eos_token_id))
    residues = sum(int(b["n_residues"].sum()) for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert residues == sum(len(s) for s in held.sequences)  # exact through the BPE merges
    assert residues / tokens > 2  # BPE tokens hold several residues each (~3 on real proteins)
    assert len(held) == 398  # every unique protein of the file, no split


def test_pretokenized_parquet(tmp_path, small_fasta):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = build_aa_tokenizer()
    rows = [tok(protgpt2_text("MKV" * (i + 5)), add_special_tokens=False)["input_ids"] for i in range(300)]
    pq.write_table(pa.table({"input_ids": rows}), tmp_path / "tok.parquet")
    d = prepare_data(str(tmp_path / "tok.parquet"), tok, block_size=32)
    assert len(d.val) + len(d.test) > 0 and d.train_blocks.shape[1] == 32
    assert all(set(s) <= set("MKV") for s in d.val.sequences)
    pq.write_table(pa.table({"input_ids": [[0, 1, 99999]]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="outside the tokenizer's vocabulary"):
        prepare_data(str(tmp_path / "other.parquet"), tok)


def test_too_little_data(tmp_path):
    p = tmp_path / "one.fasta"
    p.write_text(">a\nMKV\n")
    with pytest.raises(DataError):
        prepare_data(str(p), build_aa_tokenizer(), block_size=512)
