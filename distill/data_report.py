"""`kdsweep data report DATA`: split sizes and leakage of the hash and the cluster split of a data file.

Leakage = share of val / test proteins with >= 50 % / >= 90 % / all of their 20-mers
present in train (`distill.leakage`). The report reads the data like training does
(same cleaning and deduplication, same splits), so its figures are the ones a run
records in its provenance.
"""

from __future__ import annotations

from distill.config import TrainConfig
from distill.data import existing_data_path, is_pretokenized, read_proteins, split_proteins
from distill.splits import SPLITS, SplitSpec


def data_report(data: str = "bundled", *, identity: float = SplitSpec.identity, coverage: float = SplitSpec.coverage,
                column: str = "sequence", tokenizer=None) -> dict:
    """Counts, then per split method: clusters, split sizes and leakage of val and test.

    `tokenizer` decodes a pre-tokenized parquet (default: ProtGPT2's, the format of its UR50 shards).
    """
    # Validated like a run's config, with the same messages.
    cfg = TrainConfig().replace(data=data, cluster_identity=identity, cluster_coverage=coverage, sequence_column=column)
    path = existing_data_path(cfg.data)
    if tokenizer is None and is_pretokenized(path):
        from distill.models import PROTGPT2_TOKENIZER_DIR, load_tokenizer  # only pre-tokenized input needs it

        tokenizer = load_tokenizer(str(PROTGPT2_TOKENIZER_DIR))
    proteins = read_proteins(path, cfg.sequence_column, tokenizer)
    methods = {}
    # Cluster first: a missing mmseqs fails before the hash split's work.
    for method in ("cluster", "hash"):
        spec = SplitSpec.from_config(cfg.replace(split_method=method))
        split, info = split_proteins(proteins.sequences, spec)
        methods[method] = {"split": spec.describe(), "clusters": info.get("clusters"),
                           "sizes": {n: len(split[n]) for n in SPLITS}, "leakage": info["leakage"],
                           **({"clustering": info["clustering"]} if method == "cluster" else {})}
    return {"data": str(path), **proteins.counts, "proteins": len(proteins.sequences), "fractions": list(cfg.split),
            "methods": {m: methods[m] for m in ("hash", "cluster")}}


def format_data_report(report: dict) -> str:
    """A small fixed-width table: one row per split method."""
    lines = [f"data: {report['data']}",
             f"records {report['records']}, empty {report['empty']}, duplicates {report['duplicates']} "
             f"-> {report['proteins']} proteins; split {'/'.join(f'{f:g}' for f in report['fractions'])}", ""]
    head = f"{'split':<26} {'clusters':>8} {'train':>7} {'val':>6} {'test':>6}   {'val >=50/>=90/full %':<21} test >=50/>=90/full %"
    lines += [head, "-" * len(head)]
    for m in report["methods"].values():
        s, lk = m["sizes"], m["leakage"]
        pct = {n: "/".join(f"{100 * lk[n][k]:.1f}" for k in ("ge50", "ge90", "full")) for n in ("val", "test")}
        clusters = "-" if m["clusters"] is None else str(m["clusters"])
        lines.append(f"{m['split']:<26} {clusters:>8} {s['train']:>7} {s['val']:>6} {s['test']:>6}   "
                     f"{pct['val']:<21} {pct['test']}")
    lines += ["", "leakage: share of held-out proteins with >= 50 % / >= 90 % / all of their 20-mers present in train"]
    if "clustering" in report["methods"].get("cluster", {}):
        lines.append(f"clusters: {report['methods']['cluster']['clustering']}")
    return "\n".join(lines)
