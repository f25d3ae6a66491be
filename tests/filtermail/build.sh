#!/bin/sh
# Build filtermail, the relay's mail filter, from a source tarball with
# cargo (crates from crates.io), once per tarball content.
#
# The end-to-end suites give the binary to the relay through the relay's
# own hook, CHATMAIL_FILTERMAIL_BINARY (read by the relay's filtermail
# deployer in its install stage), instead of the download the test machines
# cannot make.
#
# The build is the appliance's own `filtermail` stage (docker/Dockerfile:
# Debian's cargo, the crates from crates.io) on the test base image, with
# the tarball as the relay's filtermail/: the binary is the one an image
# builds from that source, and the suite that builds the image from
# relay/filtermail/ (tests/e2e/relay.rs) finds the stage in Docker's build
# cache instead of compiling it a second time.
#
# Usage: tests/filtermail/build.sh [TARBALL]
#   TARBALL  default: the one filtermail-*.tar.gz in ../shared/relay/ (beside
#            the checkout; CHATMAIL_SHARED_DIR names another shared/)
#            (`git archive` of the relay's filtermail/ directory)
# Environment:
#   CHATMAIL_TEST_CACHE  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/chatmail-docker)
#   CHATMAIL_BUILD_CA    CA bundle for crates.io behind a TLS-inspecting
#                        proxy (default: the host's, as the suites pass it)
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

if ! docker info >/dev/null 2>&1; then
    echo "filtermail cannot be built here: no Docker engine answers (the build is the appliance's filtermail stage)." >&2
    echo "Start it, or let the relay download its filtermail release binary instead (leave CHATMAIL_FILTERMAIL_BINARY unset)." >&2
    exit 1
fi

start=$(date +%s)
root=$(cd "$here/../.." && pwd)
base=$("$root/tests/images/build-base.sh" | tail -n 1)
ctx="$cache/context"
rm -rf "$ctx"
mkdir -p "$ctx/relay" "$ctx/docker/files"
tar -xzf "$tarball" -C "$ctx/relay"
[ -f "$ctx/relay/filtermail/Cargo.toml" ] || { echo "build.sh: no filtermail/Cargo.toml in $tarball" >&2; exit 2; }
cp "$root/docker/files/with-build-ca" "$ctx/docker/files/"
ca=${CHATMAIL_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || ca=/dev/null
# The appliance's Dockerfile as it is, and one stage more that holds only
# the binary: the stages before it are the image's own, so Docker's build
# cache is shared with the image builds. Built the way the tool builds
# (Compose's BuildKit), then copied out of that one-file image.
{ cat "$root/docker/Dockerfile"; printf '\nFROM scratch AS filtermail-binary\nCOPY --from=filtermail /out/ /\n'; } \
    > "$ctx/Dockerfile"
image="chatmail-docker-test-filtermail:$sum"
cat > "$ctx/compose.yaml" <<YAML
services:
  filtermail:
    image: "$image"
    build:
      context: .
      dockerfile: Dockerfile
      target: filtermail-binary
      args:
        BASE_IMAGE: "$base"
      secrets:
        - build_ca
secrets:
  build_ca:
    file: "$ca"
YAML
echo "filtermail: building $(basename "$tarball") in the appliance's filtermail stage on $base" >&2
if ! docker compose -f "$ctx/compose.yaml" -p chatmail-docker-filtermail-build build --progress plain >&2; then
    echo "filtermail: the build failed (see above). Without crates.io or Debian's Rust packages it cannot work;" >&2
    echo "the relay's own download of its filtermail release is the fallback (leave CHATMAIL_FILTERMAIL_BINARY unset)." >&2
    exit 1
fi
holder=$(docker create "$image" /filtermail)
copied=0
docker cp "$holder:/filtermail" "$bin.tmp" >&2 && copied=1
docker rm "$holder" >/dev/null
docker rmi "$image" >/dev/null
[ "$copied" = 1 ] || { echo "filtermail: could not copy the binary out of $image" >&2; exit 1; }
chmod 0755 "$bin.tmp"
mv "$bin.tmp" "$bin"
rm -rf "$ctx"
end=$(date +%s)
echo "$(basename "$tarball") $((end - start)) s" > "$cache/built"
echo "filtermail: built in $((end - start)) s: $bin" >&2
echo "$bin"
