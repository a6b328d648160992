#!/usr/bin/env bash
# Re-resolve the pinned dependencies of every role (requirements/<role>.lock, with hashes) from
# pyproject.toml. `make upgrade-lock` runs this with --upgrade and then `make test` on the result,
# so a lock is only ever committed after the whole suite passed against exactly those versions.
#   bash infra/local/lock.sh            # re-lock, keeping pinned versions where still allowed
#   bash infra/local/lock.sh --upgrade  # move every package to the newest allowed version
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${QFLARE_VENV:-${QFLARE_CACHE_DIR:-/var/cache/qflare}/venv}
UV="$VENV/bin/uv"
[ -x "$UV" ] || { echo "[lock] $UV not found: run 'make setup' first" >&2; exit 1; }
# The locks target the machines QFLARE runs on: CPython 3.11 on x86-64 Linux (glibc >= 2.28).
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --no-header --annotation-style line --quiet "$@")
for role in edge services dev; do
  echo "[lock] requirements/$role.lock"
  "$UV" pip compile pyproject.toml --extra "$role" "${common[@]}" -o "requirements/$role.lock"
done
echo "[lock] requirements/bootstrap.lock"
"$UV" pip compile requirements/bootstrap.in "${common[@]}" -o requirements/bootstrap.lock
