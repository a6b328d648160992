#!/usr/bin/env bash
# Build liboqs as a shared library, with only ML-DSA-65 and ML-KEM-768, for the optional
# 'liboqs' crypto backend (liboqs-python). Debian ships no liboqs here, so the C source is
# taken from the oqs-sys crate on crates.io, which vendors it whole.
#
# Idempotent: when the library for the same crate version and options is already installed
# and loads, it only prints its path. The last line of stdout is always the path of
# liboqs.so. Point liboqs-python and qflare.crypto.liboqs at it with
#   export OQS_INSTALL_PATH=<prefix>      (both look in $OQS_INSTALL_PATH/lib)
#
# Settings (environment):
#   QFLARE_LIBOQS_PREFIX    install prefix (default: $QFLARE_CACHE_DIR/liboqs, /var/cache/qflare/liboqs)
#   QFLARE_OQS_SYS_VERSION  oqs-sys crate version; its "+liboqs-X.Y.Z" suffix is the liboqs version
#   QFLARE_OQS_SYS_SHA256   sha256 of that .crate (checked against the crates.io index as well)
#   QFLARE_BUILD_JOBS       parallel compile jobs (default: nproc)
set -euo pipefail

CACHE_DIR=${QFLARE_CACHE_DIR:-/var/cache/qflare}
PREFIX=${QFLARE_LIBOQS_PREFIX:-$CACHE_DIR/liboqs}
# Newest oqs-sys; it vendors liboqs 0.13.0 (ML-DSA from 0.12 on, seeded ML-KEM keygen present).
CRATE_VERSION=${QFLARE_OQS_SYS_VERSION:-0.11.0+liboqs-0.13.0}
CRATE_SHA256=${QFLARE_OQS_SYS_SHA256:-ac6d66ee528a895ce5cc08851698d109c5d7ee5d7a0b3b40d61550eda91e414f}
JOBS=${QFLARE_BUILD_JOBS:-$(nproc)}
INDEX=https://index.crates.io

log() { printf '[build-liboqs] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in cmake ninja cc curl tar sha256sum python3; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install cmake ninja-build gcc curl)"
done

CMAKE_ARGS=(
  -G Ninja
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_INSTALL_LIBDIR=lib
  -DBUILD_SHARED_LIBS=ON
  -DOQS_BUILD_ONLY_LIB=ON
  "-DOQS_MINIMAL_BUILD=KEM_ml_kem_768;SIG_ml_dsa_65"
  # Portable: generic code plus AVX2 code chosen at run time by CPU feature detection.
  -DOQS_DIST_BUILD=ON
  # Own SHA-2/SHA-3/AES and getrandom(): no OpenSSL headers needed, no second libcrypto.
  -DOQS_USE_OPENSSL=OFF
)
LIB="$PREFIX/lib/liboqs.so"
STAMP="$PREFIX/.qflare-build"
# Bump BUILD_REV when the build or the patch below changes, so installs get rebuilt.
BUILD_REV=1
want=$(printf '%s\n' "$BUILD_REV" "$CRATE_VERSION" "$CRATE_SHA256" "${CMAKE_ARGS[@]}" | sha256sum | cut -d' ' -f1)

# Loads, and has what liboqs-python 0.16 binds at import time.
loads() { python3 -c 'import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); l.OQS_version; l.OQS_SIG_supports_ctx_str' "$1" 2>/dev/null; }

if [ -f "$LIB" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && loads "$LIB"; then
  log "up to date: oqs-sys $CRATE_VERSION in $PREFIX"
  echo "$LIB"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/build-liboqs.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The sparse index line for this version gives the expected checksum; the index's
# config.json gives the download root (a mirror may stand in for crates.io).
crate=oqs-sys
index_sum=$(curl -fsSL --retry 3 "$INDEX/oq/s-/$crate" | python3 -c '
import json, sys
for line in sys.stdin:
    entry = json.loads(line)
    if entry["vers"] == sys.argv[1]:
        print(entry["cksum"]); break
' "$CRATE_VERSION") || die "cannot read the crates.io index entry of $crate"
[ -n "$index_sum" ] || die "$crate $CRATE_VERSION is not in the crates.io index"
[ "$index_sum" = "$CRATE_SHA256" ] || die "index checksum $index_sum differs from QFLARE_OQS_SYS_SHA256"

tarball="$work/$crate.crate"
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$CRATE_VERSION.crate" 2>/dev/null | head -n1 || true)
if [ -n "$cached" ] && echo "$CRATE_SHA256  $cached" | sha256sum -c --quiet - 2>/dev/null; then
  log "using cargo's cached $crate $CRATE_VERSION"
  cp "$cached" "$tarball"
else
  dl=$(curl -fsSL --retry 3 "$INDEX/config.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dl"])') \
    || die "cannot read $INDEX/config.json"
  case "$dl" in
    *'{'*) url=${dl//\{crate\}/$crate}; url=${url//\{version\}/$CRATE_VERSION} ;;
    *) url="$dl/$crate/$CRATE_VERSION/download" ;;
  esac
  log "downloading $crate $CRATE_VERSION"
  curl -fsSL --retry 3 -o "$tarball" "$url" || die "download failed: $url"
fi
echo "$CRATE_SHA256  $tarball" | sha256sum -c --quiet - || die "checksum mismatch for $crate $CRATE_VERSION"

tar -xzf "$tarball" -C "$work" "$crate-$CRATE_VERSION/liboqs"
src="$work/$crate-$CRATE_VERSION/liboqs"
log "liboqs $(sed -n 's/^set(OQS_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$src/CMakeLists.txt" | paste -sd.) from $crate $CRATE_VERSION"


# liboqs-python 0.16 binds OQS_SIG_supports_ctx_str when it is imported; liboqs added that
# function in 0.14, after the newest oqs-sys release. Add it, as upstream defines it, to a
# source that lacks it (a newer crate that has it is left untouched).
if ! grep -q 'OQS_SIG_supports_ctx_str' "$src/src/sig/sig.c"; then
  log "adding OQS_SIG_supports_ctx_str (liboqs >= 0.14 API) for liboqs-python"
  cat >>"$src/src/sig/sig.c" <<'EOF'

OQS_API bool OQS_SIG_supports_ctx_str(const char *method_name) {
	OQS_SIG *sig = OQS_SIG_new(method_name);
	if (sig == NULL) {
		return false;
	}
	bool supported = sig->sig_with_ctx_support;
	OQS_SIG_free(sig);
	return supported;
}
EOF
  python3 - "$src/src/sig/sig.h" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
decl = "OQS_API bool OQS_SIG_supports_ctx_str(const char *method_name);\n"
anchor = "OQS_API OQS_SIG *OQS_SIG_new("
if anchor not in text:
    sys.exit("sig.h: cannot place the OQS_SIG_supports_ctx_str declaration")
i = text.index(anchor)
i = text.rfind("\n/**", 0, i) + 1 or i  # before that function's doc comment
open(path, "w").write(text[:i] + decl + "\n" + text[i:])
EOF
fi

log "configuring and building with $JOBS jobs"
cmake -S "$src" -B "$work/build" "${CMAKE_ARGS[@]}" -DCMAKE_INSTALL_PREFIX="$PREFIX" >"$work/configure.log" 2>&1 \
  || { tail -n 40 "$work/configure.log" >&2; die "cmake configure failed"; }
cmake --build "$work/build" --parallel "$JOBS" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; die "build failed"; }

# Install into a fresh tree beside the prefix, then swap it in, so a failed or
# interrupted run never leaves a half-installed library where the old one was.
mkdir -p "$(dirname "$PREFIX")"
stage="$PREFIX.new.$$"
rm -rf "$stage"
cmake --install "$work/build" --prefix "$stage" >"$work/install.log" 2>&1 \
  || { rm -rf "$stage"; tail -n 40 "$work/install.log" >&2; die "install failed"; }
loads "$stage/lib/liboqs.so" || { rm -rf "$stage"; die "the built liboqs.so does not load"; }
echo "$want" >"$stage/.qflare-build"
rm -rf "$PREFIX.old"
[ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
mv "$stage" "$PREFIX"
rm -rf "$PREFIX.old"

log "installed in $PREFIX (use: export OQS_INSTALL_PATH=$PREFIX)"
echo "$LIB"
