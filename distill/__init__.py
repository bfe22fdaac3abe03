"""kdsweep.distill: data, models, KD loss, training loop and metrics (no Ray here)."""
