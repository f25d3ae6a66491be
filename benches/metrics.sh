#!/usr/bin/env bash
# Cost of one `chatmail-docker metrics` run against a running appliance.
#
#   benches/metrics.sh DIR [RUNS]
#
# DIR is the deployment directory of a running, healthy appliance (the
# real relay, or the end-to-end suite's stand-in). RUNS (default 20) runs
# of each command, alternating, after one warm-up each:
#  - `chatmail-docker metrics` (everything it probes, as the timer runs it)
#                                   | baseline: `chatmail-docker status --json`,
#                                     the report it shares its Docker calls
#                                     with, in the same run
# Prints min, median and max wall time of both and the ratio of the
# medians. The goal: well under a second a run (the timer runs it every
# minute). Needs bash >= 5 (EPOCHREALTIME). BIN overrides the tool
# (default: the newer of the release and debug builds).
set -euo pipefail

DIR=$(cd "${1:?usage: benches/metrics.sh DIR [RUNS]}" && pwd)
RUNS=${2:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-}
if [ -z "$BIN" ]; then
    BIN=$(ls -t "$here"/target/*/release/chatmail-docker "$here"/target/*/debug/chatmail-docker 2>/dev/null | head -1 || true)
fi
[ -x "$BIN" ] || { echo "build the tool first (cargo build --release)" >&2; exit 2; }

now() { echo "$EPOCHREALTIME"; }
ms() { echo "($(now) - $1) * 1000" | bc -l; }
stats() { sort -n | awk '{a[NR]=$1} END {printf "%.0f %.0f %.0f\n", a[1], a[int((NR+1)/2)], a[NR]}'; }

metrics=() status=()
"$BIN" --dir "$DIR" -q metrics >/dev/null
"$BIN" --dir "$DIR" -q status --json >/dev/null || true
for _ in $(seq 1 "$RUNS"); do
    t=$(now); "$BIN" --dir "$DIR" -q metrics >/dev/null; metrics+=("$(ms "$t")")
    t=$(now); "$BIN" --dir "$DIR" -q status --json >/dev/null || true; status+=("$(ms "$t")")
done
read -r mmin mmed mmax < <(printf '%s\n' "${metrics[@]}" | stats)
read -r smin smed smax < <(printf '%s\n' "${status[@]}" | stats)
printf '\n%-28s %8s %8s %8s\n' "ms ($RUNS runs)" min median max
printf '%-28s %8s %8s %8s\n' "metrics" "$mmin" "$mmed" "$mmax"
printf '%-28s %8s %8s %8s\n' "baseline: status --json" "$smin" "$smed" "$smax"
printf '%-28s %8.2f\n' "ratio of the medians" "$(echo "$mmed / $smed" | bc -l)"
"$BIN" --dir "$DIR" -q metrics | grep '^chatmail_docker_metrics_duration_seconds'
