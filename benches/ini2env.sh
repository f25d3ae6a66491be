#!/usr/bin/env bash
# Whole-process benchmark of `chatmail-docker ini2env` against the install
# guide's converter shape (Python configparser -> KEY=value lines, see
# benches/ini_to_env_baseline.py). Both run as processes in the same run,
# interleaved in chunks so machine drift hits both alike, on:
#   - the relay's default ini (plus mail_domain),
#   - a generated ini with 5,000 [params] keys.
# Two comparisons per ini:
#   convert: `ini2env --stdout > FILE` — the same work as the baseline
#            (read the ini, write env lines, no fsync);
#   merge:   `ini2env --all` into a fresh .env — the real command: merge,
#            read-back check, atomic write with fsync, mode 0600.
# Prints the mean wall time per invocation and the ratio baseline / ours.
#
# usage: benches/ini2env.sh [ROUNDS]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
cargo build --release --quiet
bin=$PWD/target/release/chatmail-docker
# The interpreter itself, not a version-manager shim in front of it.
py=$(python3 -c 'import sys; print(sys.executable)')
baseline=$PWD/benches/ini_to_env_baseline.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

{
    echo "[params]"
    echo "mail_domain = chat.example.org"
    sed -n '/^\[params\]/,$p' src/chatmail-ini-defaults.ini | grep -v '^\[params\]'
} >"$work/default.ini"
{
    echo "[params]"
    echo "mail_domain = chat.example.org"
    for i in $(seq 1 4999); do echo "key_$i = value number $i with some text"; done
} >"$work/big.ini"

now() { date +%s%N; }

# One timed chunk of N invocations; prints nanoseconds.
chunk() {
    local what=$1 ini=$2 n=$3 i start end
    start=$(now)
    for ((i = 0; i < n; i++)); do
        case $what in
        convert) "$bin" ini2env --ini "$ini" --all --stdout >"$work/o$i.env" ;;
        merge) "$bin" -q ini2env --all --ini "$ini" --env "$work/o$i.env" ;;
        baseline) "$py" "$baseline" "$ini" "$work/o$i.env" ;;
        floor) /bin/true ;;
        esac
    done
    end=$(now)
    rm -f "$work"/o*.env "$work"/.o*.env.*.tmp
    echo $((end - start))
}

bench() {
    local label=$1 ini=$2 n=$3 size=10 done_=0 conv=0 merge=0 base=0 t
    chunk convert "$ini" 2 >/dev/null
    chunk merge "$ini" 2 >/dev/null
    chunk baseline "$ini" 2 >/dev/null
    while ((done_ < n)); do
        t=$(chunk convert "$ini" $size); conv=$((conv + t))
        t=$(chunk baseline "$ini" $size); base=$((base + t))
        t=$(chunk merge "$ini" $size); merge=$((merge + t))
        done_=$((done_ + size))
    done
    awk -v l="$label" -v c="$conv" -v m="$merge" -v b="$base" -v n="$done_" 'BEGIN {
        printf "%-14s python %7.2f ms | convert %6.2f ms  %5.1fx | merge+fsync %6.2f ms  %5.1fx\n",
            l, b / n / 1e6, c / n / 1e6, b / c, m / n / 1e6, b / m }'
}

echo "ini2env vs python configparser, whole process, mean per invocation (release build)"
floor=$(chunk floor "" 100)
awk -v f="$floor" 'BEGIN { printf "(this loop starts /bin/true in %.2f ms: included in every figure)\n", f / 100 / 1e6 }'
bench "default ini" "$work/default.ini" "$rounds"
bench "5,000 keys" "$work/big.ini" "$((rounds / 4 > 10 ? rounds / 4 : 10))"
