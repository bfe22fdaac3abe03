"""How kdsweep's processes set up Ray's console: one explicit call, `configure()`, at the entry
points (the `kdsweep` command's `main`, `sweeps.runner.init_ray` for a sweep started from Python,
and a trial's first line), not a side effect of importing a module. It only sets what is unset:
a user's own RAY_* variables win. Optuna's log level is set where kdsweep opens a study
(`sweeps.storage.open_storage`): importing Optuna costs a second a `kdsweep train` need not pay."""

from __future__ import annotations

import os
import sys


def configure() -> None:
    """Ray's console settings for this process (and the Ray it starts, which inherits them)."""
    # Ray reads RAY_AUTH_MODE once, when it is first imported (set later, the driver and the Ray it
    # starts disagree and it fails to start): a process that imported Ray first keeps Ray's defaults.
    if "ray" not in sys.modules:
        # Token auth stays on (Ray's default); saying so explicitly stops Ray advising to turn it
        # off, and lets a driver join a token-auth cluster at an explicit --address.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Tune's newer console output always prints an experiment box ("Number of trials
    # 9223372036854775807" for a searcher-driven sweep) and a TensorBoard hint under
    # /tmp/ray/session_*; the older one prints nothing at verbose=0. The live view is kdsweep's own.
    # Read when a run starts, so setting it here works after Ray's import too.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
