"""The leakage figure against a brute-force Python set of k-mer strings, on real proteins."""

import numpy as np
import pytest

from kdsweep.distill.data.leakage import (K_REMOTE, REMOTE_KEY, covered_share, figure, kmer_hashes, shuffled_control,
                             split_leakage, teacher_exposure)
from kdsweep.distill.data.splits import split_sequences


def brute_share(train, heldout, k):
    kmers = {s[i : i + k] for s in train for i in range(len(s) - k + 1)}
    out = []
    for s in heldout:
        windows = [s[i : i + k] for i in range(len(s) - k + 1)]
        out.append(sum(w in kmers for w in windows) / len(windows) if windows else 0.0)
    return np.array(out)


def test_matches_brute_force_on_real_proteins(homologs):
    split = split_sequences(homologs, (0.6, 0.2, 0.2))  # a hash split: homologs on both sides
    train_sorted = np.sort(kmer_hashes(split["train"])[0])
    for name in ("val", "test"):
        want = brute_share(split["train"], split[name], 20)
        assert covered_share(train_sorted, split[name]) == pytest.approx(want, abs=1e-12)
        # Misses, partial and full coverage all occur, so the comparison exercised each case.
        assert (want == 0).any() and ((want > 0) & (want < 1)).sum() > 10
    assert (want == 1).any()
    leak = split_leakage(split)
    share8 = brute_share(split["train"], split["test"], K_REMOTE)
    assert leak["test"] == {**figure(want), REMOTE_KEY: pytest.approx((share8 >= 0.1).mean())}
    assert leak["test"]["n"] == len(split["test"])
    assert leak["test"]["ge50"] == pytest.approx((want >= 0.5).mean()) and 0.2 < leak["test"]["ge50"] < 0.8
    # homologs share 8-mers more often than 20-mers, and shuffling their residues removes (nearly) all of it
    assert leak["test"][REMOTE_KEY] > leak["test"]["ge50"]
    assert shuffled_control(split)["test"] < 0.05 < leak["test"][REMOTE_KEY]


def test_teacher_exposure_counts_exact_and_near_copies(homologs):
    split = split_sequences(homologs, (0.6, 0.2, 0.2))
    teacher = split["train"] + split["test"][:7] + [s[:-3] + "WWW" for s in split["val"][:5]]
    exp = teacher_exposure(teacher, {"val": split["val"], "test": split["test"]})
    assert exp["test"]["exact"] == 7 and exp["val"]["exact"] == 0  # near-copies are not exact copies
    base = split_leakage(split)
    # the teacher saw everything train holds plus those 12 proteins: at least the split's own leakage
    assert exp["test"]["full"] >= base["test"]["full"] + 7 / len(split["test"]) - 1e-12
    assert exp["val"]["ge90"] >= base["val"]["ge90"] and exp["val"][REMOTE_KEY] >= base["val"][REMOTE_KEY]
    assert teacher_exposure([], {"test": split["test"]})["test"] == {**figure(np.zeros(len(split["test"]))),
                                                                      REMOTE_KEY: 0.0, "exact": 0}


def test_windows_never_cross_sequence_ends():
    # "AAAB" + "CDDD" concatenated holds ABC and BCD; neither is a k-mer of a train protein.
    train_sorted = np.sort(kmer_hashes(["AAAB", "CDDD"], 3)[0])
    share = covered_share(train_sorted, ["ABCD", "AAB", "DD", "AABXDDD"], 3)
    assert share.tolist() == pytest.approx([0.0, 1.0, 0.0, 2 / 5])  # "DD": no 3-mer, counts as not leaked


def test_figure_levels():
    fig = figure(np.array([0.0, 0.49, 0.5, 0.9, 1.0]))
    assert fig == {"n": 5, "ge50": 0.6, "ge90": 0.4, "full": 0.2}
    assert figure(np.array([])) == {"n": 0, "ge50": 0.0, "ge90": 0.0, "full": 0.0}
