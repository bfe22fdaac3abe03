"""Recompute the shipped cluster assignment of the bundled data with MMseqs2 (distill/assets/data/SOURCES.md).

    .venv/bin/python scripts/bundled_clusters.py

Needs `mmseqs` on PATH. The output is byte-reproducible: tests/distill/data/test_homology.py
re-runs MMseqs2 and checks the shipped file against it.
"""

from kdsweep.distill.data.batches import BUNDLED_DATA
from kdsweep.distill.data.homology import BUNDLED_CLUSTERS, run_mmseqs, write_assignment
from kdsweep.distill.data.sequences import read_sequences
from kdsweep.distill.data.splits import SplitSpec

if __name__ == "__main__":
    spec = SplitSpec()
    # --threads does not change MMseqs2's clusters; pinning it keeps the recorded command, and so
    # the file, byte-identical on any machine.
    clustering = run_mmseqs(read_sequences(BUNDLED_DATA).sequences, spec.identity, spec.coverage, threads=2)
    write_assignment(BUNDLED_CLUSTERS, clustering)
    print(f"{BUNDLED_CLUSTERS}: {len(clustering.representative)} sequences, {clustering.n_clusters} clusters")
    print("\n".join(f"  {k}: {v}" for k, v in clustering.header.items()))
