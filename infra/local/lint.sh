#!/usr/bin/env bash
# `make lint`, also the first step of `make test`: ruff, ruff format, mypy --strict and the
# import-linter layer contracts (pyproject.toml [tool.importlinter]).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${QFLARE_VENV:-${QFLARE_CACHE_DIR:-/var/cache/qflare}/venv}/bin
paths=(qflare qflare_cli services edge devstack tests bench examples)
"$BIN/ruff" check "${paths[@]}"
"$BIN/ruff" format --check "${paths[@]}"
"$BIN/mypy" "${paths[@]}"
"$BIN/lint-imports" --no-cache
