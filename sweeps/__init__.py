"""kdsweep.sweeps: Ray Tune + Optuna orchestration, CLI and export."""
