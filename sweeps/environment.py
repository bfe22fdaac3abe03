"""How kdsweep's processes set up Ray's console: one explicit call, `configure()`, at the entry
points (the `kdsweep` command's `main`, `sweeps.runner.init_ray` for a sweep started from Python,
and a trial's first line), not a side effect of importing a module. It only sets what is unset:
a user's own RAY_* variables win.

RAY_AUTH_MODE is not set here: Ray's own rule holds. A new embedded Ray turns token auth on
(`ray.init()`; sweeps/localray.py keeps its notice off the console); a driver joining a cluster at
an explicit address uses the mode of its own environment. Forcing `token` on a driver that joins a
cluster started without it (`ray start` with no token file, as cluster.yaml's nodes start) made
every reply the cluster's workers push to the driver unauthenticated: the teacher cache's progress
stream never arrived and the sweep hung without a word (tests/sweeps/test_cluster_ray.py).

Optuna's log level is set where kdsweep opens a study (`sweeps.storage.open_storage`): importing Optuna costs a second a `kdsweep train` need not pay."""

from __future__ import annotations

import os


def configure() -> None:
    """Ray's console settings for this process (and the Ray it starts, which inherits them)."""
    # Tune's newer console output always prints an experiment box ("Number of trials
    # 9223372036854775807" for a searcher-driven sweep) and a TensorBoard hint under
    # /tmp/ray/session_*; the older one prints nothing at verbose=0. The live view is kdsweep's own.
    # Read when a run starts, so setting it here works after Ray's import too.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
