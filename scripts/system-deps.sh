#!/usr/bin/env bash
# System packages the test suite needs (CI runs this as root on a clean Debian machine).
# One package per line; add yours to the list.
#   postgresql: the server binaries (initdb, pg_ctl) the PostgreSQL storage tests start on 127.0.0.1
set -euo pipefail
PACKAGES=(
    postgresql
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
