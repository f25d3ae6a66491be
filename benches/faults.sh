#!/usr/bin/env bash
# The fault matrix with the real relay, run by hand: every long command
# killed (SIGKILL) at POINTS moments spread over its run, the Docker daemon
# restarted during upgrade's and setup's swap, a full disk under backup and
# restore, a reboot (the daemon and the container's init killed) -- all
# while mail flows on 25 and 587. It is the end-to-end fault suite
# (tests/e2e/faults.rs) with more kill points than CI runs.
#
#   benches/faults.sh [POINTS [GROUPS]]
#
# POINTS: kill points per command (default 10). GROUPS: a comma-separated
# subset of backup,restore,setup,upgrade,daemon,disk,reboot,certwatch,dataroot
# (default all).
#
# Needs what the end-to-end suites need (Docker, Compose v2, the relay
# snapshot in ../shared/ or CHATMAIL_SHARED_DIR, root for the tmpfs
# mounts); takes the engine lock like they do. It stops and starts the
# Docker daemon (as `.ci/run` starts it: `dockerd >/tmp/dockerd.log &`):
# run it on a test machine, never beside a relay that matters.
#
# Prints one table, one row per fault:
#   fault | seconds from the fault until 25 accepted mail again | until 993
#   greeted again | the longest outage on 25 / on 993 after the fault (the
#   next command's own swap included) | messages accepted (250) during it |
#   of those, in the mailbox afterwards | what was left on disk
# "0.0" means the port never stopped serving. The full log is kept in
# $LOG (default /tmp/faults-bench.log). Exit status: the suite's (1 when
# any row broke a promise: mail lost, something left, never back).
set -uo pipefail

POINTS=${1:-10}
WHICH=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
LOG=${LOG:-/tmp/faults-bench.log}

cd "$here"
echo "fault matrix: $POINTS kill points per command; log in $LOG" >&2
started=$(date +%s)
CHATMAIL_FAULT_POINTS=$POINTS CHATMAIL_FAULTS=$WHICH cargo test --test e2e faults -- --nocapture >"$LOG" 2>&1
status=$?
elapsed=$(( $(date +%s) - started ))

grep '^faults|' "$LOG" | sed 's/^faults|//' | column -t -s '|' || true
grep -E '^faults: (PROBLEM|whole suite)' "$LOG" || true
echo "($elapsed s in all; exit $status)" >&2
exit $status
