"""`kdsweep data report DATA`: split sizes, leakage and (optionally) teacher exposure of the hash and the
cluster split of a data file.

Per split method and held-out split (val, test), two figures named for what they measure
(`distill.data.leakage`): **near-duplicate leakage at 20-mers** (share of held-out proteins with
>= 50 % / >= 90 % / all of their 20-mers present in train) and the **8-mer share** (held-out
proteins with >= 10 % of their 8-mers in train: a remote-homology indicator), beside the
8-mer share of the same proteins residue-shuffled (what chance gives). With
`--teacher-train` (`distill.data.exposure`), the same figures of the held-out proteins against
the teacher's training data, and how many of them it saw verbatim. The report reads the
data like training does (same cleaning and deduplication, same splits), so its figures are
the ones a run records in its provenance.
"""

from __future__ import annotations

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.data.batches import existing_data_path, is_pretokenized, read_proteins, split_proteins
from kdsweep.distill.data.exposure import UNKNOWN, exposure, load_teacher_data
from kdsweep.distill.data.leakage import LEAKAGE_WORDS, REMOTE_KEY, REMOTE_WORDS, shuffled_control
from kdsweep.distill.data.splits import SPLITS, SplitSpec

HELDOUT = ("val", "test")


def data_report(data: str = "bundled", *, identity: float = SplitSpec.identity, coverage: float = SplitSpec.coverage,
                column: str = "sequence", tokenizer=None, teacher_train: str | None = None) -> dict:
    """Counts, then per split method: clusters, split sizes, leakage of val and test (20-mer near-duplicates
    and the 8-mer share), the shuffled control and, given `teacher_train`, the teacher's exposure.

    `tokenizer` decodes a pre-tokenized parquet (default: ProtGPT2's, the format of its UR50 shards).
    """
    # Validated like a run's config, with the same messages.
    cfg = TrainConfig().replace(data=data, cluster_identity=identity, cluster_coverage=coverage, sequence_column=column)
    path = existing_data_path(cfg.data)
    if tokenizer is None and is_pretokenized(path):
        from kdsweep.distill.models import PROTGPT2_TOKENIZER_DIR, load_tokenizer  # only pre-tokenized input needs it

        tokenizer = load_tokenizer(str(PROTGPT2_TOKENIZER_DIR))
    teacher = load_teacher_data(teacher_train) if teacher_train else None  # a bad path fails before the work
    proteins = read_proteins(path, cfg.sequence_column, tokenizer)
    methods = {}
    # Cluster first: a missing mmseqs fails before the hash split's work.
    for method in ("cluster", "hash"):
        spec = SplitSpec.from_config(cfg.replace(split_method=method))
        split, info = split_proteins(proteins.sequences, spec)
        methods[method] = {"split": spec.describe(), "clusters": info.get("clusters"),
                           "sizes": {n: len(split[n]) for n in SPLITS}, "leakage": info["leakage"],
                           "shuffled_kmer8": shuffled_control(split),
                           **({"clustering": info["clustering"]} if method == "cluster" else {})}
        if teacher is not None:
            methods[method]["teacher_exposure"] = exposure(teacher, {n: split[n] for n in HELDOUT}, path)
    return {"data": str(path), **proteins.counts, "proteins": len(proteins.sequences), "fractions": list(cfg.split),
            "teacher_train": teacher.source if teacher else None,
            "methods": {m: methods[m] for m in ("hash", "cluster")}}


def _pct(fig: dict, keys) -> str:
    return "/".join(f"{100 * fig[k]:.1f}" for k in keys)


def format_data_report(report: dict) -> str:
    """Fixed-width tables: one row per split method and held-out split."""
    lines = [f"data: {report['data']}",
             f"records {report['records']}, empty {report['empty']}, duplicates {report['duplicates']} "
             f"-> {report['proteins']} proteins; split {'/'.join(f'{f:g}' for f in report['fractions'])}", ""]
    head = (f"{'split':<26} {'clusters':>8} {'train':>7} {'val':>6} {'test':>6}  {'held out':<8} "
            f"{'20-mer >=50/>=90/full %':<24} {'8-mer share %':>13} {'shuffled %':>10}")
    lines += [head, "-" * len(head)]
    for m in report["methods"].values():
        s, lk = m["sizes"], m["leakage"]
        clusters = "-" if m["clusters"] is None else str(m["clusters"])
        for i, n in enumerate(HELDOUT):
            first = (f"{m['split']:<26} {clusters:>8} {s['train']:>7} {s['val']:>6} {s['test']:>6}" if i == 0
                     else " " * 57)
            lines.append(f"{first}  {n:<8} {_pct(lk[n], ('ge50', 'ge90', 'full')):<24} "
                         f"{100 * lk[n][REMOTE_KEY]:>13.1f} {100 * m['shuffled_kmer8'][n]:>10.1f}")
    lines += ["", f"20-mer: {LEAKAGE_WORDS}", f"8-mer: {REMOTE_WORDS}; shuffled: the same held-out proteins with "
              "their residues shuffled (chance alone)"]
    if "clustering" in report["methods"].get("cluster", {}):
        lines.append(f"clusters: {report['methods']['cluster']['clustering']}")
    lines.append("")
    if report.get("teacher_train") is None:
        lines.append(f"teacher exposure: {UNKNOWN} (--teacher-train FILE|demo measures it)")
        return "\n".join(lines)
    lines.append(f"teacher exposure to {report['teacher_train']}:")
    for m in report["methods"].values():
        for n in HELDOUT:
            fig = m["teacher_exposure"][n]
            near = (f"; 20-mer {_pct(fig, ('ge50', 'ge90', 'full'))} %; 8-mer share {100 * fig[REMOTE_KEY]:.1f} %"
                    if "ge50" in fig else " (ID list: exact matches only)")
            lines.append(f"  {m['split']:<26} {n:<5} {fig['exact']} of {fig['n']} verbatim{near}")
    return "\n".join(lines)
