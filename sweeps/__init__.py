"""kdsweep.sweeps: Ray Tune + Optuna orchestration, and the Ray-free reading of a sweep
(`layout`, `space`, `study`, `status`, `export`). Comments cite `docs/method.md` as `method §N`.
Ray's console settings: `sweeps.environment.configure`, called by the entry points."""
