#!/usr/bin/env bash
# Two relays federating: the relay's online tests that need a second relay
# (CHATMAIL_DOMAIN2: accounts on both, securejoin and read receipts across
# them, a bounce DKIM-signed by one and checked by the other's filtermail),
# with the real filtermail on both, on a Docker network of the test's own.
#
#   benches/federation.sh
#
# Runs the end-to-end test tests/e2e/federation.rs (ignored by `cargo test`:
# it takes longer than CI's budget allows) and prints what it measured:
# the outcome of each test, the time each phase took and in all. Needs what
# the end-to-end suites need (a Docker engine, Compose v2, the relay
# snapshot in ../shared/relay or CHATMAIL_SHARED_DIR); takes the engine
# lock like them, so it waits for a running suite. Exit status: the test's.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
set +e
cargo test --locked --test e2e federation -- --ignored --nocapture 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s)

echo
echo "federation bench: exit $rc after $((end - start)) s (build of the test included)"
grep -E '^e2e-federation: |^e2e: relay online suite' "$log" | sed 's/^/  /' || true
grep -E 'unexpected outcomes|^[a-z_]+(\[[^]]*\])?: (failed|skipped|error|did not run)' "$log" \
    | sed 's/^/  /' || true
exit "$rc"
