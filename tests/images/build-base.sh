#!/bin/sh
# Build the base image the end-to-end suite builds the appliance on.
#
# No image registry is needed: the root filesystem is made from Debian
# packages with debootstrap and imported into the local Docker engine. The
# image tag carries a content hash of this script and the package list, so a
# second run finds the image and does nothing.
#
# Usage: tests/images/build-base.sh [--print-tag]
#   --print-tag  print the tag this script builds (chatmail-docker-test-base:<hash>) and exit
# Environment:
#   DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#   SUITE          Debian suite (default bookworm)
# Prints the image tag on the last line of stdout.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
suite=${SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=$(grep -v '^[[:space:]]*#' "$here/base-packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')

hash=$( { cat "$here/build-base.sh" "$here/base-packages.txt"; echo "$suite"; } \
        | sha256sum | cut -c1-16)
tag="chatmail-docker-test-base:$hash"

if [ "${1:-}" = "--print-tag" ]; then
    echo "$tag"
    exit 0
fi

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag is present, nothing to do" >&2
    echo "$tag"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debootstrap is missing; installing it" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/chatmail-base.XXXXXX")
trap 'rm -rf "$workdir"' EXIT INT TERM
rootfs="$workdir/rootfs"

start=$(date +%s)
echo "building $tag: debootstrap --variant=minbase $suite (+ $packages)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2

# Keep the image small and reproducible-ish: no apt lists, caches or logs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log \
       "$rootfs"/var/log/apt/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
# Same apt sources a Debian image ships, so Dockerfile RUN steps can install.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://security.debian.org/debian-security $suite-security main
SOURCES

tar -C "$rootfs" --numeric-owner -c . | docker import \
    -c 'CMD ["/sbin/init"]' \
    -c 'ENV container=docker' \
    -m "debootstrap $suite minbase + $packages" - "$tag" >&2
end=$(date +%s)
echo "built $tag in $((end - start)) s" >&2
docker image ls "$tag" >&2
echo "$tag"
