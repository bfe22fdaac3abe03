"""What a student is measured against besides its teacher: the composition floor and the natural noise of
aa_kl (method §5), read per arm over its replicates.

* **Unigram floor.** Each replicate's test metrics hold the perplexity of a context-free model of the
  train split's token frequencies on the same test tokens (`unigram_ppl`, `unigram_ppl_ratio`), the
  student's per-token gap to it with a 95 % interval over proteins, and `at_unigram_floor`: that
  interval does not lie wholly below 0, i.e. the student is not measurably better than composition.
  An arm is flagged "predicts composition only" when any of its replicates is; the cell says how many.
  `unigram_gain_recovered` is the share of the teacher's gain over composition the student recovers.
* **aa_kl natural floor.** Each replicate's `aa_kl_floor_mean` / `aa_kl_floor_p95` is what natural
  held-out proteins resampled to its own residue count score (`distill.eval.generation`); a value above the
  95th percentile is outside what sampling alone gives. `aa_kl_floor_diff_p95` and
  `aa_kl_floor_interaction_p95` are the 95th percentiles of |a - b| and |a - b - c + d| between
  independent natural resamples: how large a difference between arms (or an interaction term) sampling
  alone makes.
"""

from __future__ import annotations

import math

import pandas as pd

from kdsweep.analysis.fmt import sig
from kdsweep.analysis.load import column, per_seed

COMPOSITION_ONLY = "predicts composition only"
FLOOR_FLAG, RECOVERED = "at_unigram_floor", "unigram_gain_recovered"


def _sel(ok: pd.DataFrame, scale: str, arm: str) -> pd.DataFrame:
    return ok[(ok["scale"] == scale) & (ok["arm"] == arm)] if not ok.empty else ok


def at_floor(ok: pd.DataFrame, scale: str, arm: str) -> tuple[list[int], int]:
    """(seeds at the unigram floor, seeds that measured it) of one arm's usable replicates."""
    sel = _sel(ok, scale, arm)
    col = column("test", FLOOR_FLAG)
    if sel.empty or col not in sel.columns:
        return [], 0
    known = sel[sel[col].notna()]
    return sorted(int(s) for s, f in zip(known["seed"], known[col]) if f is True or f == 1.0), len(known)


def floor_text(ok: pd.DataFrame, scale: str, arm: str) -> str:
    """'PREDICTS COMPOSITION ONLY (2/3 seeds at the unigram floor)', 'above the floor (3/3 seeds)', or
    'not measured' (runs older than the floor)."""
    flagged, n = at_floor(ok, scale, arm)
    if n == 0:
        return "not measured"
    if flagged:
        return f"{COMPOSITION_ONLY.upper()} ({len(flagged)}/{n} seeds at the unigram floor)"
    return f"above the floor ({n}/{n} seeds measurably better than composition)"


def floor_warnings(ok: pd.DataFrame, scales, arms) -> list[str]:
    """One warning per (scale, arm) with a replicate at the unigram floor."""
    out = []
    for scale in scales:
        for arm in arms:
            flagged, n = at_floor(ok, scale, arm)
            if flagged:
                out.append(f"{scale}/{arm}: {COMPOSITION_ONLY}: in {len(flagged)} of {n} replicates (seed "
                           f"{', '.join(map(str, flagged))}) the student is not measurably better on the test tokens "
                           "than a unigram model of the train split's token frequencies (method §5); its ppl_ratio, "
                           "ECE and verdicts describe composition, not distillation.")
    return out


def aa_kl_above(ok: pd.DataFrame, scale: str, arm: str) -> tuple[int, int]:
    """(replicates whose aa_kl_natural lies above their natural resampling 95th percentile, replicates
    with both numbers)."""
    sel = _sel(ok, scale, arm)
    value, p95 = column("test", "aa_kl_natural"), column("test", "aa_kl_floor_p95")
    if sel.empty or p95 not in sel.columns:
        return 0, 0
    both = sel[sel[value].notna() & sel[p95].notna()]
    return int((both[value] > both[p95]).sum()), len(both)


def aa_kl_floor_text(ok: pd.DataFrame, scale: str, arm: str) -> str:
    """'0.0036 / 0.0068 (natural mean / 95th pct); 1/3 above' or '-' when not measured."""
    mean = per_seed(ok, scale, arm, "aa_kl_floor_mean")
    p95 = per_seed(ok, scale, arm, "aa_kl_floor_p95")
    if mean.empty:
        return "-"
    above, n = aa_kl_above(ok, scale, arm)
    return f"{sig(float(mean.mean()))} / {sig(float(p95.mean()))}; {above}/{n} seeds above the 95th pct"


def interaction_noise_text(ok: pd.DataFrame, scale: str, term: float) -> str:
    """Whether an aa_kl interaction term lies outside what natural resamples give: |term| against the mean,
    over the scale's replicates, of their `aa_kl_floor_interaction_p95`."""
    col = column("test", "aa_kl_floor_interaction_p95")
    sel = ok[ok["scale"] == scale] if not ok.empty else ok
    if sel.empty or col not in sel.columns or math.isnan(term):
        return ""
    ref = pd.to_numeric(sel[col], errors="coerce").dropna()
    if ref.empty:
        return ""
    where = "outside" if abs(term) > float(ref.mean()) else "inside"
    return f" [{where} natural sampling noise: |term| vs its 95th pct {sig(float(ref.mean()))}]"
