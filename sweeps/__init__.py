"""kdsweep.sweeps: Ray Tune + Optuna orchestration, and the Ray-free reading of a sweep
(`layout`, `space`, `study`, `status`, `export`). Comments cite `docs/method.md` as `method §N`."""

import os
import sys

# How Ray talks to the console, set here because Ray reads RAY_AUTH_MODE once, when it is first
# imported (set later, the driver and the Ray it starts disagree and it fails to start); a process
# that imported Ray before kdsweep keeps Ray's defaults.
if "ray" not in sys.modules:
    # Token auth stays on (Ray's default); saying so explicitly stops Ray advising to turn it
    # off, and lets a driver join a token-auth cluster at an explicit --address.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
# Tune's newer console output always prints an experiment box ("Number of trials
# 9223372036854775807" for a searcher-driven sweep) and a TensorBoard hint under
# /tmp/ray/session_*; the older one prints nothing at verbose=0. The live view is kdsweep's own.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
