"""kdsweep.analysis: tables, plots and reports built from a finished sweep (no Ray here).
Comments cite `docs/method.md` as `method §N`."""
