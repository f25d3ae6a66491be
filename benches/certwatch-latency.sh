#!/usr/bin/env bash
# cert-watch benchmark: reaction latency and idle CPU.
#
#   benches/certwatch-latency.sh [ROTATIONS] [IDLE_SECONDS]
#
# Builds an acmetool layout (live/<domain> -> ../certs/<id>) in a temp dir,
# starts `chatmail-docker cert-watch` on it with a reload command that
# records when it starts, and rotates the certificate ROTATIONS times
# (default 50) by swapping the live symlink with a rename. Reports the
# latency from the rename to the reload command starting (median, p99), then
# the watcher's CPU time over IDLE_SECONDS (default 60) without changes.
#
# Baselines, run side by side in the same run:
#  - latency floor: the same recording command started directly right after
#    a rename (what any reaction costs at least: sh + date);
#  - the install guide's monitor (hash `find $PATH_TO_SSL -type f` every
#    60 s): whether it notices a rotation at all, and its CPU time over the
#    same idle window.
#
# Needs bash >= 5 (EPOCHREALTIME), openssl, GNU date, bc. BIN overrides the
# binary (default: the newer of the release and debug builds under
# target/<host tuple>/, see .cargo/config.toml).
set -euo pipefail

ROTATIONS=${1:-50}
IDLE=${2:-60}
DOMAIN=example.org
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-}
if [ -z "$BIN" ]; then
    # The most recently built of release and debug.
    tuple=$(rustc -vV | sed -n 's/^host: //p')
    BIN=$(ls -t "$here/target/$tuple/release/chatmail-docker" "$here/target/$tuple/debug/chatmail-docker" 2>/dev/null | head -n 1 || true)
fi
[ -n "$BIN" ] || { echo "build first (cargo build --release) or set BIN" >&2; exit 2; }

work=$(mktemp -d)
watcher=""
guide=""
cleanup() {
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true
    [ -n "$guide" ] && kill "$guide" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

deploy=$work/deploy
acme=$deploy/data/chatmail-acme
mkdir -p "$acme/live" "$acme/certs" "$deploy/data"
printf 'MAIL_DOMAIN=%s\n' "$DOMAIN" > "$deploy/.env"
rec=$work/reloads
: > "$rec"

# Issue certificate number $1 into certs/c$1 (not yet live).
issue() {
    local d=$acme/certs/c$1
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN" -days 30 \
        -keyout "$d/privkey" -out "$d/fullchain" 2>/dev/null
}
# Make certificate $1 live: new symlink, then the final rename.
swap() {
    ln -sfn "../certs/c$1" "$acme/live/.tmp"
    mv -T "$acme/live/.tmp" "$acme/live/$DOMAIN"
}
lines() { wc -l < "$rec"; }
wait_lines() {
    local want=$1 n=0
    while [ "$(lines)" -lt "$want" ]; do
        sleep 0.002
        n=$((n + 1))
        [ $n -lt 15000 ] || { echo "no reload after 30 s" >&2; cat "$work/watch.log" >&2; exit 1; }
    done
}

echo "issuing $((ROTATIONS + 1)) certificates ..." >&2
for i in $(seq 0 "$ROTATIONS"); do issue "$i"; done
swap 0

"$BIN" --dir "$deploy" cert-watch --no-verify \
    --reload-command "date +%s.%N >> '$rec'" 2> "$work/watch.log" &
watcher=$!
wait_lines 1

# The install guide's monitor, on the same layout.
guide_hash() { find "$acme/live/$DOMAIN" -type f -print0 | sort -z | xargs -0 -r sha256sum | sha256sum; }
guide_before=$(guide_hash)

declare -a lat floor
for i in $(seq 1 "$ROTATIONS"); do
    n=$(lines)
    t0=$EPOCHREALTIME
    swap "$i"
    wait_lines $((n + 1))
    t1=$(tail -n 1 "$rec")
    lat+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
    # Floor: the same command started directly after a rename.
    ln -sfn "../certs/c$i" "$acme/live/.floor"
    f0=$EPOCHREALTIME
    mv -T "$acme/live/.floor" "$acme/live/floor-$DOMAIN"
    sh -c "date +%s.%N >> '$work/floor'"
    f1=$(tail -n 1 "$work/floor")
    floor+=("$(echo "($f1 - $f0) * 1000" | bc -l)")
done
guide_after=$(guide_hash)

stats() { # prints "median p99" of the arguments (ms)
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
        i = int(0.99 * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR;
        printf "%.1f %.1f\n", m, a[i] }'
}
read -r lat_med lat_p99 < <(stats "${lat[@]}")
read -r fl_med fl_p99 < <(stats "${floor[@]}")
reloads=$(($(lines) - 1))

echo "cert-watch reaction latency over $ROTATIONS rotations (rename -> reload command start):"
printf '  cert-watch      median %8.1f ms   p99 %8.1f ms   reloads %d/%d\n' "$lat_med" "$lat_p99" "$reloads" "$ROTATIONS"
printf '  floor (direct)  median %8.1f ms   p99 %8.1f ms\n' "$fl_med" "$fl_p99"
printf '  ratio to floor  median %8.1f x    p99 %8.1f x\n' \
    "$(echo "$lat_med / $fl_med" | bc -l)" "$(echo "$lat_p99 / $fl_p99" | bc -l)"
printf '  p99 vs 1 s target: %.2f x\n' "$(echo "$lat_p99 / 1000" | bc -l)"
if [ "$guide_before" = "$guide_after" ]; then
    echo "  install guide's monitor: same hash before and after $ROTATIONS rotations -> never reloads on this layout"
else
    echo "  install guide's monitor: noticed the change at its next 60 s poll (latency 0-60 s)"
fi

# Idle CPU: the watcher vs the guide's loop over the same window, from
# /proc/<pid>/stat (utime+stime of the process, exited threads included,
# plus reaped children; clock ticks).
(
    while true; do guide_hash > /dev/null; sleep 60; done
) &
guide=$!
ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
sleep 1 # let the last reload settle
w0=$(ticks "$watcher"); g0=$(ticks "$guide")
sleep "$IDLE"
w1=$(ticks "$watcher"); g1=$(ticks "$guide")
w_ms=$(echo "($w1 - $w0) * 1000 / $hz" | bc -l)
g_ms=$(echo "($g1 - $g0) * 1000 / $hz" | bc -l)
echo "idle CPU over ${IDLE} s without changes (resolution $(echo "1000 / $hz" | bc) ms):"
printf '  cert-watch             %6.0f ms = %.3f %% of one core (target <= 0.1 %%)\n' "$w_ms" "$(echo "$w_ms / 10 / $IDLE" | bc -l)"
printf '  guide monitor (60 s)   %6.0f ms = %.3f %% of one core\n' "$g_ms" "$(echo "$g_ms / 10 / $IDLE" | bc -l)"
