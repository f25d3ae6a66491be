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
#   3. downtime of the final sync after 1% of the messages changed, as
#      reported by migrate (stop units + final sync), next to rsync --delete
#      on the same change.
# Uses the release binary (cargo build --release) and needs rsync, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-20000}
MIB=${2:-500}
BIN=${BIN:-target/release/chatmail-docker}
REPEAT=${REPEAT:-3}
command -v rsync >/dev/null || { echo "rsync is needed (apt-get install rsync)" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release

W=$(mktemp -d "${BENCH_TMP:-/var/tmp}/migrate-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
echo "generating $FILES messages (~$MIB MiB) in $W ..."
python3 benches/gen_maildir.py create "$W/host" "$FILES" "$MIB"

# A systemctl that knows two running units and records nothing else.
mkdir -p "$W/bin"
cat > "$W/bin/systemctl" <<'SH'
#!/bin/sh
case "$1" in
show) shift 3; for u in "$@"; do case "$u" in postfix.service|dovecot.service)
  printf 'Id=%s\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n' "$u";;
  *) printf 'Id=%s\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\n' "$u";; esac; done;;
*) exit 0;;
esac
SH
chmod +x "$W/bin/systemctl"
export PATH="$W/bin:$PATH"

now() { date +%s%N; }
# best-of-N wall time in seconds of "$@" after running $SETUP each time
best() {
    local setup=$1; shift
    local best=
    for _ in $(seq "$REPEAT"); do
        eval "$setup"
        local s e
        s=$(now); "$@" >/dev/null; e=$(now)
        local t=$(( e - s ))
        if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best=$t; fi
    done
    awk -v n="$best" 'BEGIN { printf "%.3f", n / 1e9 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

ours() { "$BIN" -q --root "$W/host" --dir "$W/deploy" migrate --yes --presync-only; }
theirs() { rsync -aH --numeric-ids "$W/host/home/" "$W/rsync/" && sync -f "$W/rsync"; }
theirs_nosync() { rsync -aH --numeric-ids "$W/host/home/" "$W/rsync/"; }
fresh_ours() { rm -rf "$W/deploy"; mkdir -p "$W/deploy"; sync; }
fresh_theirs() { rm -rf "$W/rsync"; sync; }

# Warm the page cache for both.
cat /dev/null $(find "$W/host" -type f) > /dev/null 2>&1 || true

first_ours=$(best fresh_ours ours)
first_rsync=$(best fresh_theirs theirs)
first_rsync_nosync=$(best fresh_theirs theirs_nosync)
sync
again_ours=$(best : ours)
again_rsync=$(best : theirs_nosync)

# Final sync after 1% changed.
python3 benches/gen_maildir.py change "$W/host" 1
out=$("$BIN" --root "$W/host" --dir "$W/deploy" migrate --yes 2>"$W/final.err")
grep -E 'Synced|Verified' "$W/final.err" || true
downtime=$(printf '%s\n' "$out" | sed -n 's/^Downtime so far: \([0-9.]*\)s.*/\1/p')
s=$(now); rsync -aH --numeric-ids --delete "$W/host/home/" "$W/rsync/"; sync -f "$W/rsync"; e=$(now)
final_rsync=$(awk -v n=$(( e - s )) 'BEGIN { printf "%.3f", n / 1e9 }')

echo
printf '%-34s %10s %10s %8s\n' "" "migrate" "rsync" "ratio"
printf '%-34s %9ss %9ss %8s\n' "first copy (best of $REPEAT)" "$first_ours" "$first_rsync" "$(ratio "$first_ours" "$first_rsync")"
printf '%-34s %9ss %9ss %8s\n' "  (vs rsync without sync -f)" "$first_ours" "$first_rsync_nosync" "$(ratio "$first_ours" "$first_rsync_nosync")"
printf '%-34s %9ss %9ss %8s\n' "no-change re-run (best of $REPEAT)" "$again_ours" "$again_rsync" "$(ratio "$again_ours" "$again_rsync")"
printf '%-34s %9ss %9ss %8s\n' "final sync, 1% changed (downtime)" "$downtime" "$final_rsync" "$(ratio "$downtime" "$final_rsync")"
