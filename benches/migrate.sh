#!/usr/bin/env bash
# Benchmark `chatmail-docker migrate` against `rsync -aH --numeric-ids` on
# the same generated tree, in the same run, and print the ratios.
#
#   benches/migrate.sh [FILES] [MIB]     (default 20000 files, 500 MiB)
#
# Both sides run with a warm page cache. `migrate` flushes the filesystem
# after a pre-sync that wrote anything (so the downtime does not pay for it),
# so its first copy is compared with rsync followed by `sync -f` (and, for
# reference, with rsync alone). Measured:
#   1. first copy      migrate --presync-only  vs  rsync + sync -f
#   2. no-change rerun migrate --presync-only  vs  rsync (neither writes)
#   3. downtime of the switch-over when 1% of the messages changed between
#      the pre-sync and the stop, as reported by migrate (stop units + final
#      sync + flush), next to rsync --delete + sync -f on the same change.
# Uses the release binary (cargo build --release) and needs rsync, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-20000}
MIB=${2:-500}
# .cargo/config.toml builds for the host tuple explicitly: target/<tuple>/.
BIN=${BIN:-target/$(rustc -vV | sed -n 's/^host: //p')/release/chatmail-docker}
REPEAT=${REPEAT:-5}
command -v rsync >/dev/null || { echo "rsync is needed (apt-get install rsync)" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release

W=$(mktemp -d "${BENCH_TMP:-/var/tmp}/migrate-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
echo "generating $FILES messages (~$MIB MiB) in $W ..."
python3 benches/gen_maildir.py create "$W/host" "$FILES" "$MIB"

# A systemctl that knows two running units. `stop` first applies the 1%
# change when $CHANGE_ON_STOP names the tree: the mail that arrives, moves
# and is expunged between the pre-sync and the moment the relay stops,
# which is exactly what the final sync (the downtime) has to copy.
mkdir -p "$W/bin"
cat > "$W/bin/systemctl" <<'SH'
#!/bin/sh
case "$1" in
stop) if [ -n "${CHANGE_ON_STOP:-}" ]; then python3 "$GEN" change "$CHANGE_ON_STOP" 1 >&2; fi;;
show) shift 3; for u in "$@"; do case "$u" in postfix.service|dovecot.service)
  printf 'Id=%s\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n' "$u";;
  *) printf 'Id=%s\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\n' "$u";; esac; done;;
*) exit 0;;
esac
SH
chmod +x "$W/bin/systemctl"
export PATH="$W/bin:$PATH"
export GEN="$PWD/benches/gen_maildir.py"

now() { date +%s%N; }
# time_ns CMD...: wall time of one run in ns
time_ns() { local s e; s=$(now); "$@" >/dev/null; e=$(now); echo $(( e - s )); }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
secs() { awk -v n="$1" 'BEGIN { printf "%.3f", n / 1e9 }'; }
# pair SETUP_A A SETUP_B B: run A and B in turn REPEAT times (A B A B ...,
# so drifting machine load hits both alike); prints "median_A median_B
# median_of_pairwise_ratios".
pair() {
    local sa=$1 a=$2 sb=$3 b=$4 ta tb
    : > "$W/ta"; : > "$W/tb"; : > "$W/r"
    for _ in $(seq "$REPEAT"); do
        $sa; ta=$(time_ns $a)
        $sb; tb=$(time_ns $b)
        echo "$ta" >> "$W/ta"; echo "$tb" >> "$W/tb"
        awk -v a="$ta" -v b="$tb" 'BEGIN { print a / b }' >> "$W/r"
    done
    echo "$(secs "$(median < "$W/ta")") $(secs "$(median < "$W/tb")") $(median < "$W/r")"
}

ours() { "$BIN" -q --root "$W/host" --dir "$W/deploy" migrate --yes --presync-only; }
theirs() { rsync -aH --numeric-ids "$W/host/home/" "$W/rsync/" && sync -f "$W/rsync"; }
theirs_nosync() { rsync -aH --numeric-ids "$W/host/home/" "$W/rsync/"; }
fresh_ours() { rm -rf "$W/deploy"; mkdir -p "$W/deploy"; sync; }
fresh_theirs() { rm -rf "$W/rsync"; sync; }

# Warm the page cache for both.
find "$W/host" -type f -exec cat {} + > /dev/null

read -r first_ours first_rsync first_ratio < <(pair fresh_ours ours fresh_theirs theirs)
read -r again_ours again_rsync again_ratio < <(pair sync ours sync theirs_nosync)

# The real switch-over: pre-sync (nothing left to copy), stop (1% of the
# mail changes right then), final sync, verify.
out=$(CHANGE_ON_STOP="$W/host" "$BIN" --root "$W/host" --dir "$W/deploy" migrate --yes 2>"$W/final.err")
grep -E 'changed|Synced|Verified' "$W/final.err" || true
downtime=$(printf '%s\n' "$out" | sed -n 's/^Downtime so far: \([0-9.]*\)s.*/\1/p')
final_ours=$(printf '%s\n' "$out" | sed -n 's/^Downtime so far: .*final sync \([0-9.]*\)s.*/\1/p')
sync
s=$(now); rsync -aH --numeric-ids --delete "$W/host/home/" "$W/rsync/"; sync -f "$W/rsync"; e=$(now)
final_rsync=$(awk -v n=$(( e - s )) 'BEGIN { printf "%.3f", n / 1e9 }')

echo
printf '%-36s %10s %10s %8s\n' "(medians of $REPEAT paired runs)" "migrate" "rsync" "ratio"
printf '%-36s %9ss %9ss %8.2f\n' "first copy (+ flush)" "$first_ours" "$first_rsync" "$first_ratio"
printf '%-36s %9ss %9ss %8.2f\n' "no-change re-run" "$again_ours" "$again_rsync" "$again_ratio"
printf '%-36s %9ss %9ss %8.2f\n' "final sync, 1% changed (+ flush)" "$final_ours" "$final_rsync" "$(awk -v a="$final_ours" -v b="$final_rsync" 'BEGIN { print a / b }')"
echo "downtime reported by migrate (stop units + final sync): ${downtime}s"
echo "  (the stop includes this benchmark's change script, which runs inside 'systemctl stop')"
