"""Cluster split of the bundled data: MMseqs2 easy-linclust vs easy-cluster, time and leakage.

    python benchmarks/cluster_modes.py [--threads N]

Both modes cluster the 18,801 unique bundled proteins at the default thresholds
(identity 0.5, coverage 0.8) exactly as `distill.data.homology.run_mmseqs` does; each
clustering then splits the data by `distill.data.splits` and `distill.data.leakage` measures
the share of val / test proteins with >= 50 % / >= 90 % / all of their 20-mers in
train. The hash split is the reference row. Prints wall seconds (mmseqs, leakage)
and the time ratio cluster / linclust. Needs `mmseqs` on PATH.
"""

from __future__ import annotations

import argparse
import time

from kdsweep.distill.data.batches import BUNDLED_DATA
from kdsweep.distill.data.homology import available_cores, run_mmseqs
from kdsweep.distill.data.leakage import format_leakage, split_leakage
from kdsweep.distill.data.sequences import read_sequences
from kdsweep.distill.data.splits import SplitSpec, split_sequences


def report(name: str, split: dict, seconds: float | None) -> None:
    t0 = time.perf_counter()
    leak = split_leakage(split)
    t_leak = time.perf_counter() - t0
    sizes = "/".join(str(len(split[n])) for n in ("train", "val", "test"))
    clock = "" if seconds is None else f"mmseqs {seconds:6.1f} s, "
    print(f"{name:<9} train/val/test {sizes}; {clock}leakage measured in {t_leak:.2f} s")
    for n in ("val", "test"):
        print(f"    {n:<4} {format_leakage(leak[n])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=available_cores())
    args = ap.parse_args()
    spec = SplitSpec()
    seqs = read_sequences(BUNDLED_DATA).sequences
    print(f"{len(seqs)} unique proteins; identity {spec.identity}, coverage {spec.coverage}, threads {args.threads}")
    report("hash", split_sequences(seqs, spec.fractions), None)
    seconds = {}
    for mode in ("linclust", "cluster"):
        t0 = time.perf_counter()
        clustering = run_mmseqs(seqs, spec.identity, spec.coverage, threads=args.threads, mode=mode)
        seconds[mode] = time.perf_counter() - t0
        report(mode, split_sequences(seqs, spec.fractions, clustering.representative_sequences(seqs)), seconds[mode])
        print(f"    {clustering.n_clusters} clusters; {clustering.header['command']} "
              f"(mmseqs {clustering.header['mmseqs_version']})")
    print(f"time ratio cluster / linclust: {seconds['cluster'] / seconds['linclust']:.1f}")


if __name__ == "__main__":
    main()
