#!/usr/bin/env bash
# Build the Jaeger v2 binary (cmd/jaeger) from its Go module through the module proxy.
# Jaeger tags each v2.x release also as v1.(x+63) because its module path has no /v2
# suffix; the Go tooling only accepts the v1.x tag. Usage: build.sh OUTPUT_BINARY
set -euo pipefail
cd "$(dirname "$0")"
out=${1:?usage: build.sh OUTPUT_BINARY}
export GOFLAGS="-mod=mod -buildvcs=false"
go build -trimpath -ldflags='-s -w' -o "$out" github.com/jaegertracing/jaeger/cmd/jaeger
