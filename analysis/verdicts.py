"""The two comparisons of method §7, named apart, each a table of verdicts with Holm's correction.

* **Tuned arm vs tuned baseline** (`verdict_table`): a comparison of *methods*. Each enhanced arm's
  tuned config against the baseline's tuned config, paired by replicate seed on test. Both configs
  came out of a search, so the difference holds the luck of the two searches as well as the
  enhancement; only with several independent searches per study (search replicates) does the
  interval include that luck (`analysis.stats`, two levels). With one search, every row says search
  noise is not included. Per scale, one more row gives the **chosen arm, selection-free**: each seed
  (or search replicate) reported with the arm chosen before it (`analysis.select.selection_free`),
  so the chosen arm's own verdict has its nominal error rate.
* **Enhancement on vs off at the same config** (`mechanism_table`): the effect of the *mechanism* at
  its tuned point. Each enhanced arm's tuned config against the same config with one enhancement
  switched off (the matched ablation of `sweep replicate`), same seeds, paired per seed. The search's
  luck is the same on both sides and cancels; what is left is what the enhancement itself does there.

In both, every row's p-value is two-sided (Student t), and Holm's step-down correction runs over all
the rows of the table (every scale): the raw and the adjusted p-value and verdict are both shown.
"""

from __future__ import annotations

import math

import pandas as pd

from kdsweep.analysis.fmt import sig, with_interval
from kdsweep.analysis.load import per_seed, unit_of, usable_replicates
from kdsweep.analysis.select import choose_arm, selection_free_of
from kdsweep.analysis.stats import LEVEL, SEARCH_REPLICATES, Paired, holm, paired_difference, two_level, verdict_word
from kdsweep.analysis.tables import Table, metric_cell, search_counts
from kdsweep.sweeps.space import BASELINE, ENHANCED_ARMS, Study

TUNED, MECHANISM = "tuned arm vs tuned baseline", "enhancement on vs off at the same config"
CHOSEN_FREE = "chosen arm, selection-free"
METRIC = "ppl_ratio"


def search_noise(d: Paired, search_replicates: int) -> str:
    """Whether an interval includes the search's luck (method §7: with R = 1 it never does)."""
    if d.unit == SEARCH_REPLICATES:
        return f"included ({d.n} search replicates, two-level interval)"
    if search_replicates > 1:
        return f"not included (replicates of only one of the {search_replicates} search replicates)"
    return "not included (one search per study: search.search_replicates = 1)"


def diff_text(d: Paired) -> str:
    if d.n == 0:
        return "missing (no seed shared)"
    if d.n == 1:
        return f"{sig(d.mean)} (n=1, no interval)"
    return f"{with_interval(d.mean, d.lo, d.hi)} (n={d.n} {d.unit})"


def p_text(p: float) -> str:
    return "-" if math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "< 1e-4")


def _finish(rows: list[list[str]], records: list[dict], diffs: list[Paired]) -> None:
    """Holm over every row of the table: fills the 'Holm p' and 'verdict (Holm)' cells (the last two)."""
    adjusted = holm([d.p for d in diffs])
    m = sum(not math.isnan(d.p) for d in diffs)
    for row, rec, d, p_adj in zip(rows, records, diffs, adjusted):
        word = verdict_word(d.mean, p_adj, d.n, d.level)
        row[-2:] = [p_text(p_adj), word]
        lo, hi = d.interval_at(1 - (1 - d.level) / max(m, 1))
        rec.update({"p_holm": p_adj, "verdict_holm": word, "m": m, "ci_low_bonferroni": lo,
                    "ci_high_bonferroni": hi})


def _record(d: Paired) -> dict:
    return {"diff_mean": d.mean, "ci_low": d.lo, "ci_high": d.hi, "n": d.n, "unit": d.unit, "level": d.level,
            "p": d.p, "verdict": d.verdict, "seeds": " ".join(map(str, d.seeds))}


def verdict_table(reps: pd.DataFrame, trials: pd.DataFrame, scales: list[str], search_replicates: int = 1) -> Table:
    """Tuned arm vs tuned baseline on test: every enhanced arm, and the chosen arm selection-free."""
    ok = usable_replicates(reps)
    units = unit_of(ok)
    pct = round(100 * LEVEL)
    header = ["scale", "comparison", "search noise", "baseline ppl_ratio", "arm ppl_ratio",
              f"arm - baseline: mean [{pct} % CI]", "p", "verdict", "search trials (arm | baseline)", "Holm p",
              "verdict (Holm)"]
    rows, records, diffs = [], [], []
    for scale in scales:
        chosen = choose_arm(ok, trials, scale, ENHANCED_ARMS).arm
        base = per_seed(ok, scale, BASELINE, METRIC)
        base_cell = metric_cell(ok, scale, BASELINE, METRIC).text()
        base_search = search_counts(trials, scale, BASELINE)
        for arm in ENHANCED_ARMS:
            d = paired_difference(per_seed(ok, scale, arm, METRIC), base, unit_of=units)
            label = f"{arm} (tuned) vs baseline (tuned)" + (" [chosen on val]" if arm == chosen else "")
            rows.append([scale, label, search_noise(d, search_replicates), base_cell,
                         metric_cell(ok, scale, arm, METRIC).text(), diff_text(d), p_text(d.p), d.verdict,
                         f"{search_counts(trials, scale, arm)} | {base_search}", "", ""])
            records.append({"scale": scale, "comparison": TUNED, "arm": arm, "chosen": arm == chosen, **_record(d)})
            diffs.append(d)
        free = selection_free_of(ok, trials, scale, BASELINE, ENHANCED_ARMS)
        d = two_level(free.diff, units)
        rows.append([scale, f"{CHOSEN_FREE} ({free.text or 'no unit to report'}) vs baseline (tuned)",
                     search_noise(d, search_replicates), base_cell, "-", diff_text(d), p_text(d.p), d.verdict,
                     f"- | {base_search}", "", ""])
        records.append({"scale": scale, "comparison": TUNED, "arm": CHOSEN_FREE, "chosen": True,
                        "chosen_by_unit": free.text, **_record(d)})
        diffs.append(d)
    _finish(rows, records, diffs)
    notes = [f"Comparison: {TUNED} (a comparison of methods). Each enhanced arm's tuned config vs the baseline's "
             "tuned config on the test split, paired by replicate seed: d = arm - baseline per seed; with one search "
             f"per study, mean(d) ± t(0.975, n-1) * sd(d) / sqrt(n) over seeds ({pct} % interval); with R search "
             "replicates, the same over the R replicates' mean differences (two levels: search replicate, then seed; "
             "method §7). Lower ppl_ratio is better: better when the interval lies below 0, worse when above.",
             "Search noise: which config a search finds is luck too. With one search per study the interval covers "
             "training-seed noise only, so a 'better' may be the luck of the arm's search rather than the "
             "enhancement; the mechanism table ('enhancement on vs off at the same config') separates the two.",
             f"{CHOSEN_FREE}: the chosen arm's own verdict. Each seed (each search replicate when there are several) "
             "is reported with the enhanced arm chosen before it: the first on the search objective, the others on "
             "the val ppl_ratio of those before; so no model is reported on a choice it took part in, and its error "
             "rate is nominal (tests/analysis/test_select.py). The arm rows marked [chosen on val] are reported on "
             "the very seeds that chose them: read the selection-free row for the chosen arm.",
             f"Multiplicity: Holm's step-down correction over all {len(diffs)} rows of this table (family-wise error "
             f"{100 - pct} %); 'p' and 'verdict' are raw, 'Holm p' and 'verdict (Holm)' adjusted. The CSV also holds "
             "Bonferroni's simultaneous intervals (ci_low_bonferroni, ci_high_bonferroni).",
             "search trials: completed / stopped early by ASHA in each study: the best config is the best of the "
             "completed ones."]
    return Table("verdicts", f"Tuned arm vs tuned baseline: paired difference, {pct} % interval, verdict (test split)",
                 header, rows, pd.DataFrame(records), notes)


def mechanism_table(reps: pd.DataFrame, studies: tuple[Study, ...], scales: list[str],
                    search_replicates: int = 1) -> Table:
    """Enhancement on vs off at the same config: each enhanced arm's tuned config vs its matched ablation."""
    ok = usable_replicates(reps)
    units = unit_of(ok)
    pct = round(100 * LEVEL)
    header = ["scale", "arm (its tuned config)", "enhancement", "search noise", "on: ppl_ratio", "off: ppl_ratio",
              f"on - off: mean [{pct} % CI]", "p", "verdict", "Holm p", "verdict (Holm)"]
    arms = [a for a in ENHANCED_ARMS if any(s.arm == a for s in studies)]
    rows, records, diffs = [], [], []
    for scale in scales:
        for arm in arms:
            on = per_seed(ok, scale, arm, METRIC)
            for enhancement in next(s for s in studies if s.arm == arm).enhancements:
                off_ok = usable_replicates(reps, enhancement)
                off = per_seed(off_ok, scale, arm, METRIC)
                d = paired_difference(on, off, unit_of=units)
                off_text = (metric_cell(off_ok, scale, arm, METRIC).text() if len(off) else
                            "missing (no matched ablation: sweep replicate without --no-ablations)")
                rows.append([scale, arm, enhancement, search_noise(d, search_replicates), metric_cell(ok, scale, arm, METRIC).text(), off_text,
                             diff_text(d), p_text(d.p), d.verdict, "", ""])
                records.append({"scale": scale, "comparison": MECHANISM, "arm": arm, "enhancement": enhancement,
                                **_record(d)})
                diffs.append(d)
    _finish(rows, records, diffs)
    notes = [f"Comparison: {MECHANISM} (the mechanism at its tuned point). Each enhanced arm's tuned config is "
             "retrained with one enhancement switched off (smoothing: null; uncertainty: false), every other "
             "setting the same, with the same seeds (`sweep replicate`'s matched ablation); d = on - off per seed, "
             f"{pct} % t-interval (over search replicates' means when there are several). The search that found the "
             "config is the same on both sides, so its luck cancels: a tuned-vs-tuned 'better' whose on/off effect "
             "is near 0 came from the search, not from the enhancement.",
             "Under weight_norm: mask (the default), switching uncertainty weighting off also removes its shrinking "
             "of the soft term by the mean weight w̄ in [0.5, 1], i.e. it raises the effective soft weight: the "
             "uncertainty effect here is reweighting plus that rescaling (method §3.5).",
             f"Multiplicity: Holm's step-down correction over all {len(diffs)} rows of this table; 'p' and 'verdict' "
             "raw, 'Holm p' and 'verdict (Holm)' adjusted."]
    return Table("mechanism", f"Enhancement on vs off at the same config: paired effect, {pct} % interval, verdict "
                 "(test split)", header, rows, pd.DataFrame(records), notes)
