import pytest
import torch

from kdsweep.distill.data.batches import cache_dir, heldout_from_file, load_splits, prepare_data, protgpt2_text, split_proteins
from kdsweep.distill.data.homology import cluster_representatives
from kdsweep.distill.data.splits import SPLITS, SplitSpec
from kdsweep.distill.errors import DataError
from kdsweep.distill.models import PROTGPT2_TOKENIZER_DIR, load_tokenizer
from kdsweep.distill.teacher.demo import build_aa_tokenizer
from tests.fixtures import requires_mmseqs, write_real_fasta

# 60 families of homologs: 0.6/0.2/0.2 puts ~12 whole families in each held-out split.
WIDE = (0.6, 0.2, 0.2)

# Packing and batching do not depend on the split method; the hash split needs no `mmseqs`.
HASH = SplitSpec(method="hash")


def test_protgpt2_format():
    seq = "A" * 61 + "K"
    assert protgpt2_text(seq) == "<|endoftext|>\n" + "A" * 60 + "\n" + "AK" + "\n<|endoftext|>"


def test_packing_and_heldout_batches(small_fasta):
    tok = build_aa_tokenizer()
    d = prepare_data(str(small_fasta), tok, block_size=64, split=HASH)
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
    d = prepare_data(str(small_fasta), tok, block_size=64, split=HASH)
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
    d = prepare_data(str(tmp_path / "tok.parquet"), tok, split=SplitSpec("hash"), block_size=32)
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


@requires_mmseqs
def test_cluster_split_is_the_default_and_its_leakage_is_recorded(homolog_fasta, homologs):
    tok = build_aa_tokenizer()
    splits, info = load_splits(str(homolog_fasta), tok, column="sequence", split=SplitSpec(fractions=WIDE))
    assert info["split_method"] == "cluster" and (info["cluster_identity"], info["cluster_coverage"]) == (0.5, 0.8)
    assert info["clusters"] == 60 and info["clustering"].startswith("mmseqs: mmseqs easy-linclust ")
    rep = cluster_representatives(homologs, 0.5, 0.8, cache=cache_dir()).representative_sequences(homologs)
    families = {n: {rep[s] for s in splits[n][1]} for n in SPLITS}
    assert all(families[n] for n in SPLITS) and sum(len(f) for f in families.values()) == 60  # no family split
    # The hash split of the same proteins leaves homologs on both sides; the cluster split does not.
    hashed = prepare_data(str(homolog_fasta), tok, split=SplitSpec("hash", WIDE), block_size=64).info
    assert hashed["split_method"] == "hash" and hashed["cluster_identity"] is None
    for n in ("val", "test"):
        assert hashed["leakage"][n]["ge50"] > 0.15 and info["leakage"][n]["ge50"] == 0.0
    assert info["split_note"].startswith("split: cluster (MMseqs2 0.5/0.8); near-duplicate leakage at 20-mers (held-out "
                                         "proteins with >= 50 %")
    assert "8-mer share (remote-homology indicator" in info["split_note"]
    assert hashed["split_note"].startswith("split: hash; near-duplicate leakage at 20-mers") and "test: 28.6 % >=50 %" in hashed["split_note"]
    # Thresholds enter the cache key: a stricter identity gives other clusters.
    strict = prepare_data(str(homolog_fasta), tok, split=SplitSpec("cluster", WIDE, identity=0.95), block_size=64)
    assert strict.info["cluster_identity"] == 0.95 and strict.info["clusters"] > 60


def test_bundled_data_splits_by_shipped_clusters_without_mmseqs(bundled_proteins, no_mmseqs):
    split, info = split_proteins(bundled_proteins, SplitSpec())
    assert info["clustering"].startswith("shipped: mmseqs easy-linclust ") and info["clusters"] == 9821
    assert [len(split[n]) for n in SPLITS] == [17037, 841, 923]
    hashed = split_proteins(bundled_proteins, SplitSpec("hash"))[1]
    for n in ("val", "test"):  # docs/benchmarks.md: 28 % -> about 2 %
        assert hashed["leakage"][n]["ge50"] > 0.25 and info["leakage"][n]["ge50"] < 0.03


def test_user_data_without_mmseqs_fails_with_install_hint(tmp_path, no_mmseqs):
    data = str(write_real_fasta(tmp_path / "user.fasta", 60))
    with pytest.raises(DataError, match="apt-get install mmseqs2"):
        prepare_data(data, build_aa_tokenizer(), block_size=64)
    assert prepare_data(data, build_aa_tokenizer(), split=SplitSpec("hash"), block_size=64).info["split_method"] == "hash"


@requires_mmseqs
def test_pretokenized_rows_are_deduplicated_and_split_like_their_sequences(tmp_path, homologs, homolog_fasta):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = build_aa_tokenizer()
    rows = tok([protgpt2_text(s) for s in homologs], add_special_tokens=False)["input_ids"]
    # Three exact copies, and one protein written with 30-residue lines: other token ids, same protein.
    relined = tok(protgpt2_text(homologs[7], line_length=30), add_special_tokens=False)["input_ids"]
    assert relined != rows[7]
    rows += [rows[0], rows[5], rows[5], relined]
    pq.write_table(pa.table({"input_ids": rows}), tmp_path / "tok.parquet")
    spec = SplitSpec(fractions=WIDE)
    d = prepare_data(str(tmp_path / "tok.parquet"), tok, split=spec, block_size=64)
    assert (d.info["records"], d.info["duplicates"], d.info["empty"]) == (len(homologs) + 4, 4, 0)
    assert d.info["n_train"] + d.info["n_val"] + d.info["n_test"] == len(homologs)
    # The same proteins from FASTA split identically: the cluster split ran on the decoded rows.
    f = prepare_data(str(homolog_fasta), tok, split=spec, block_size=64)
    assert d.val.sequences == f.val.sequences and d.test.sequences == f.test.sequences
    assert d.info["leakage"] == f.info["leakage"] and d.info["clusters"] == 60
    # Held-out rows are the file's own token ids.
    assert all(ids.tolist() in rows for ids in d.val.ids)


class _Payload:
    """A pickle that, when loaded, creates a folder: what a hostile cache file would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("planted", ["pickle", "torch.save"])
def test_a_planted_pickle_in_the_split_cache_runs_nothing_and_is_rebuilt(planted, tmp_path, small_fasta,
                                                                        monkeypatch):
    """The split cache is data only (NumPy without pickles, JSON): a pickle planted under a cache
    entry's name, as a shared or copied cache folder may hold, is never loaded; the entry reads
    as damaged and is rebuilt over."""
    import pickle

    import numpy as np

    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "cache"))
    tok = build_aa_tokenizer()
    first, info = load_splits(str(small_fasta), tok, column="sequence", split=HASH)
    [entry] = cache_dir().glob("splits-*.npz")
    marker = tmp_path / "payload-ran"
    if planted == "pickle":
        entry.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"splits": _Payload(marker), "info": {}}, entry)  # the old format, with a payload
    again, info_again = load_splits(str(small_fasta), tok, column="sequence", split=HASH)
    assert not marker.exists()
    assert info_again == info
    assert all(a[1] == b[1] and all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
               for a, b in ((first[n], again[n]) for n in SPLITS))
    with np.load(entry, allow_pickle=False) as z:  # rebuilt as a data-only archive
        assert "info" in z.files
    assert not [p for p in cache_dir().iterdir() if ".tmp" in p.name]
