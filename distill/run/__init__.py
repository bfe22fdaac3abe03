"""One run from config to metrics: the training loop and its step, checkpoints, run folders; the engines of `kdsweep train`, `evaluate` and `data report`."""
