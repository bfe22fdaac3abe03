"""The report's warnings: too few seeds, a best value at the edge of its search range, a degenerate model,
search noise left out, unknown teacher exposure."""

from __future__ import annotations

import math

import pandas as pd

from kdsweep.analysis.checks import degenerate, edge_of_range, few_seeds, range_position, report_warnings
from kdsweep.sweeps.space import SEARCH_SPACES_DIR, load_space

SPACE = load_space(SEARCH_SPACES_DIR / "demo.yaml")  # lr loguniform [1e-3, 3e-2], alpha uniform [0.1, 0.9], ...


def _reps(accuracy: dict[tuple[str, int], float], scale: str = "demo-xs") -> pd.DataFrame:
    return pd.DataFrame([{"scale": scale, "arm": arm, "seed": seed, "search_replicate": 0, "off": "",
                          "status": "completed", "has_test": True, "test_ppl_ratio": 1.2, "test_accuracy": acc}
                         for (arm, seed), acc in accuracy.items()])


def _trials(**params) -> pd.DataFrame:
    """One completed best trial of demo-xs/baseline with `params`, and a worse one at the other end."""
    base = {"lr": 5e-3, "warmup_steps": 2, "temperature": 2.5, "alpha": 0.5, "smoothing": math.nan}
    rows = [{"scale": "demo-xs", "arm": "baseline", "status": "completed", "val_ppl": 10.0, "trial_id": "best",
             **base, **params},
            {"scale": "demo-xs", "arm": "baseline", "status": "completed", "val_ppl": 11.0, "trial_id": "worse",
             **base, "lr": 1e-3, "alpha": 0.1}]
    return pd.DataFrame(rows)


def test_edge_of_a_search_range_is_named_with_its_range():
    assert range_position(1e-3, 1e-3, 1e-1, log=True) == 0 and range_position(1e-2, 1e-3, 1e-1, log=True) == 0.5
    assert edge_of_range(SPACE, _trials()) == []  # the worse trial sits at the edges: only the best counts
    [lr] = edge_of_range(SPACE, _trials(lr=1.1e-3))
    assert lr.startswith("demo-xs/baseline: the best config's lr = 0.0011 lies at the low edge of its search range "
                         "[0.001, 0.03] (loguniform")
    # 2e-3 is 3 % of the lr range on a linear scale but 20 % on the log scale the search samples on
    assert edge_of_range(SPACE, _trials(lr=2e-3)) == []
    [warmup, alpha] = edge_of_range(SPACE, _trials(alpha=0.88, warmup_steps=5))
    assert "alpha = 0.88 lies at the high edge" in alpha and "[0.1, 0.9] (uniform" in alpha
    assert "warmup_steps = 5 lies at the high edge of its search range [0, 5]" in warmup


def test_degenerate_model_same_accuracy_everywhere_or_zero_per_arm():
    same = {("baseline", 1): 0.09499, ("baseline", 2): 0.094995, ("both", 1): 0.09502, ("both", 2): 0.09499}
    [b, w] = degenerate(_reps(same), ["demo-xs"], ["baseline", "both"])
    assert b.startswith("demo-xs/baseline: every one of its 2 completed replicates has test accuracy 0.09499 "
                        "(spread < 0.0001)") and w.startswith("demo-xs/both: every one of its 2")
    # an arm is judged on its own: "both" now differs between its seeds, "baseline" still does not
    [b2] = degenerate(_reps({**same, ("both", 2): 0.0952}), ["demo-xs"], ["baseline", "both"])
    assert b2 == b
    [z] = degenerate(_reps({("baseline", 1): 0.31, ("both", 2): 0.0}), ["demo-xs"], ["baseline", "both"])
    assert z.startswith("demo-xs/both: test accuracy 0 in seed 2")
    assert degenerate(_reps({("baseline", 1): 0.09499}), ["demo-xs"], ["baseline"]) == []  # one run proves nothing


def test_fewer_than_three_seeds_is_a_warning_per_arm():
    reps = _reps({("baseline", 1): 0.3, ("baseline", 2): 0.31, ("baseline", 3): 0.32, ("both", 1): 0.3,
                  ("both", 2): 0.33})
    [none, two] = few_seeds(reps, ["demo-xs"], ["baseline", "both", "uncertainty"])
    assert two.startswith("n=2 usable replicate(s), fewer than 3, in demo-xs/both: a 95 % t-interval is ± 12.7 "
                          "standard errors wide")
    assert none.startswith("n=0 usable replicate(s), fewer than 3, in demo-xs/uncertainty: no usable replicate")
    warnings = report_warnings(SPACE, _trials(lr=1.1e-3), reps, exposure_unknown=True)
    assert any("lr = 0.0011" in w for w in warnings) and two in warnings
    assert any(w.startswith("search noise is not included in any verdict") for w in warnings)  # R = 1
    assert any(w.startswith("teacher exposure: teacher's training data unknown") for w in warnings)
    assert not any("exposure" in w for w in report_warnings(SPACE, _trials(), reps))
