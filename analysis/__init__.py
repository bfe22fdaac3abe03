"""kdsweep.analysis: tables, plots and reports built from a finished sweep."""
