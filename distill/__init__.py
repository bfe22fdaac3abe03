"""kdsweep.distill: data, models, KD loss, training loop and metrics (no Ray here).

Comments cite the method, `docs/method.md`, as `method §N` (section N, step N.k).
"""
