#!/bin/sh
# Build filtermail, the relay's mail filter, from a source tarball with
# cargo (crates from crates.io), once per tarball content.
#
# The end-to-end suites give the binary to the relay through the relay's
# own hook, CHATMAIL_FILTERMAIL_BINARY (read by the relay's filtermail
# deployer in its install stage), instead of the download the test machines
# cannot make.
#
# Usage: tests/filtermail/build.sh [TARBALL]
#   TARBALL  default: the one filtermail-*.tar.gz in ../shared/relay/ (beside
#            the checkout; CHATMAIL_SHARED_DIR names another shared/)
#            (`git archive` of the relay's filtermail/ directory)
# Environment:
#   CHATMAIL_TEST_CACHE  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/chatmail-docker)
# The build lands in CACHE/filtermail-<sha256 of the tarball, 16 hex>/: a
# second run with the same tarball prints the path and builds nothing.
# Prints the binary's path on the last line of stdout; progress on stderr.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
shared="${CHATMAIL_SHARED_DIR:-$here/../../../shared}/relay"
if [ $# -ge 1 ]; then
    tarball=$1
else
    set -- "$shared"/filtermail-*.tar.gz
    if [ $# -ne 1 ] || [ ! -f "$1" ]; then
        echo "build.sh: expected exactly one filtermail-*.tar.gz in $shared, found: $*" >&2
        exit 2
    fi
    tarball=$1
fi
[ -f "$tarball" ] || { echo "build.sh: $tarball: no such file" >&2; exit 2; }

sum=$(sha256sum "$tarball" | cut -c1-16)
cache_root=${CHATMAIL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatmail-docker}
cache="$cache_root/filtermail-$sum"
bin="$cache/filtermail"

mkdir -p "$cache"
# One build at a time per tarball; the others wait and find the binary.
exec 9>"$cache/.lock"
flock 9

if [ -x "$bin" ] && [ -s "$cache/built" ]; then
    echo "filtermail: cached build of $(basename "$tarball") in $cache" >&2
    echo "$bin"
    exit 0
fi

missing=""
command -v cargo >/dev/null 2>&1 || missing="$missing cargo (Rust >= 1.85: rustup, or Debian's cargo-web + rustc-web)"
command -v cc >/dev/null 2>&1 || missing="$missing cc (a C compiler: gcc)"
if [ -n "$missing" ]; then
    echo "filtermail cannot be built here: missing$missing." >&2
    echo "Install them, or let the relay download its filtermail release binary instead (leave CHATMAIL_FILTERMAIL_BINARY unset)." >&2
    exit 1
fi

start=$(date +%s)
rm -rf "$cache/src"
mkdir -p "$cache/src"
tar -xzf "$tarball" -C "$cache/src"
manifest=$(find "$cache/src" -maxdepth 2 -name Cargo.toml | head -n 1)
[ -n "$manifest" ] || { echo "build.sh: no Cargo.toml in $tarball" >&2; exit 2; }
echo "filtermail: building $(basename "$tarball") with $(cargo --version) (cargo build --release --locked)" >&2
# From the source directory: no cargo configuration of the caller's
# directory (this project's static linking, say) applies.
if ! (cd "$(dirname "$manifest")" && CARGO_TARGET_DIR="$cache/target" \
        cargo build --release --locked --manifest-path "$manifest" >&2); then
    echo "filtermail: the build failed (see above). Without crates.io or a compiler it cannot work;" >&2
    echo "the relay's own download of its filtermail release is the fallback (leave CHATMAIL_FILTERMAIL_BINARY unset)." >&2
    exit 1
fi
install -m 0755 "$cache/target/release/filtermail" "$bin.tmp"
mv "$bin.tmp" "$bin"
end=$(date +%s)
echo "$(basename "$tarball") $((end - start)) s" > "$cache/built"
echo "filtermail: built in $((end - start)) s: $bin" >&2
echo "$bin"
