#!/bin/sh
# The test dependencies of the relay's online test suite, for running it
# inside the appliance (the image does not carry them): the PyPI packages
# of requirements.txt (for the image's Python 3.11, installed without
# dependencies into lib/, their commands in lib/bin) and Debian's git
# (unpacked into git/; the suite's test_deployed_state asks
# `git rev-parse HEAD` in the relay checkout).
#
# Usage: tests/relay-online/deps.sh
# Cached in ${CHATMAIL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatmail-docker}/relay-online-<hash>/
# by the content of this script and requirements.txt. Prints that directory
# on the last line of stdout.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
sum=$(cat "$here/deps.sh" "$here/requirements.txt" | sha256sum | cut -c1-16)
cache_root=${CHATMAIL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatmail-docker}
out="$cache_root/relay-online-$sum"
mkdir -p "$cache_root"
exec 9>"$cache_root/.relay-online.lock"
flock 9
if [ -f "$out/.complete" ]; then
    echo "relay-online: test dependencies cached in $out" >&2
    echo "$out"
    exit 0
fi
rm -rf "$out.tmp"
mkdir -p "$out.tmp/git"
start=$(date +%s)
python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: --python-version 3.11 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any --implementation cp \
    --target "$out.tmp/lib" -r "$here/requirements.txt" >&2
(cd "$out.tmp" && apt-get download git >&2)
dpkg-deb -x "$out.tmp"/git_*.deb "$out.tmp/git"
rm -f "$out.tmp"/git_*.deb
touch "$out.tmp/.complete"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "relay-online: test dependencies ready in $(( $(date +%s) - start )) s: $out" >&2
echo "$out"
