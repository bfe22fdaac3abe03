#!/usr/bin/env bash
# System packages some tests need (they skip, saying why, where a binary is absent). Debian/Ubuntu,
# as root: CI runs this before the README's test command. One package per line, with its user.
set -euo pipefail
PACKAGES=(
  mmseqs2          # the cluster split of user data (distill/homology.py)
  postgresql       # the server (initdb, pg_ctl) the PostgreSQL storage tests start on 127.0.0.1
  chromium         # the report and optuna-dashboard seen in a browser (tests/analysis/test_browser.py)
  chromium-driver  # Selenium drives chromium through it (same test)
)
if [ "$(id -u)" != 0 ]; then
  echo "run as root (sudo bash scripts/system-deps.sh) to install: ${PACKAGES[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
echo "installed: ${PACKAGES[*]}"
