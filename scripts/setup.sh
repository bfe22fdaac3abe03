#!/usr/bin/env bash
# Create ./.venv and install kdsweep with its test extras. Idempotent; safe on a fresh machine.
# torch is pinned first to 2.13.0: on these machines a CPU wheel of it is cached locally,
# and any other version would pull gigabytes of CUDA packages.
# pip runs with -qq: errors still print; its warnings do not (unreachable extra index locations of
# a machine's own pip config, setuptools' note on editable installs), which read like failures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -qq --upgrade pip
.venv/bin/python -m pip install -qq "torch==2.13.0"
.venv/bin/python -m pip install -qq -e ".[dev]"
echo "kdsweep installed in $(pwd)/.venv"
