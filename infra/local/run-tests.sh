#!/usr/bin/env bash
# `make test`: lint, start the stack if it is not already up, run every test, and stop
# what this script started. Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
VENV=${QFLARE_VENV:-${QFLARE_CACHE_DIR:-/var/cache/qflare}/venv}
BIN="$VENV/bin"
# Use the locally built liboqs (infra/local/build-liboqs.sh) when present, so the
# cross-backend signature tests run; without it they skip with a reason.
LIBOQS=${QFLARE_LIBOQS_PREFIX:-${QFLARE_CACHE_DIR:-/var/cache/qflare}/liboqs}
if [ -f "$LIBOQS/lib/liboqs.so" ]; then export OQS_INSTALL_PATH="$LIBOQS"; fi

bash infra/local/lint.sh || exit 1

started=0
if ! "$BIN/qflare" stack status >/dev/null 2>&1; then
  "$BIN/qflare" stack up || exit 1
  started=1
fi
stop_stack() { if [ "$started" = 1 ]; then "$BIN/qflare" stack down; fi; }
trap stop_stack EXIT

"$BIN/python" -m pytest "$@"
