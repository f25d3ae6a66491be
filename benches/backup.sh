#!/usr/bin/env bash
# Benchmark `chatmail-docker backup` and `restore` against tar and zstd on
# the same generated mailstore, in the same run, and print the ratios.
#
#   benches/backup.sh [FILES] [MIB]     (default 20000 files, 500 MiB)
#
# Measured (median of REPEAT runs, A and B alternating, warm page cache):
#   1. full backup     backup FILE          vs  tar -C data -cf - . | zstd -T0 -3 > FILE
#                      (throughput ratio: theirs / ours in time; goal >= 0.9);
#                      backup fsyncs the archive, so also against tar|zstd + sync -f
#   2. incremental     backup --since FULL after 1% of the messages changed,
#                      against the full backup of the same tree (goal <= 0.1);
#                      IDLE=S waits S seconds before each run, as a cron job
#                      starts on an idle server (on a VM, memory idle for a
#                      few seconds may have gone back to the host)
#   3. restore         restore FILE         vs  zstd -d | tar -x  (goal >= 0.9);
#                      restore flushes the restored tree before moving it
#                      into place, so it is also compared with tar + sync -f;
#                      each run restores into a new directory (needs about
#                      4 x REPEAT x the mailstore's size of free space)
#   4. queue pause     the pause reported in the manifest, with a stand-in
#                      `docker` (the tool's own share of the window; the
#                      engine's `docker compose exec` adds its start-up)
# Uses the release binary (cargo build --release); needs python3, tar, zstd.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-20000}
MIB=${2:-500}
BIN=${BIN:-$PWD/target/$(rustc -vV | sed -n 's/^host: //p')/release/chatmail-docker}
REPEAT=${REPEAT:-3}
IDLE=${IDLE:-0}
command -v zstd >/dev/null || { echo "zstd is needed (apt-get install zstd)" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release

W=$(mktemp -d "${BENCH_TMP:-/var/tmp}/backup-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
echo "generating $FILES messages (~$MIB MiB) in $W ..."
python3 benches/gen_maildir.py create "$W/gen" "$FILES" "$MIB" >/dev/null
D=$W/deploy
mkdir -p "$D/data" "$D/docker"
mv "$W/gen/home" "$D/data/chatmail"
mv "$W/gen/etc/dkimkeys" "$D/data/chatmail-dkimkeys"
mv "$W/gen/var/lib/acme" "$D/data/chatmail-acme"
mkdir -p "$D/data/chatmail-postfix/deferred/A" "$D/data/chatmail-postfix/active"
for i in $(seq 1 50); do head -c 4000 /dev/urandom > "$D/data/chatmail-postfix/deferred/A/Q$i"; done
cp "$W/gen/usr/local/lib/chatmaild/chatmail.ini" "$D/chatmail.ini"
echo "MAIL_DOMAIN=example.org" > "$D/.env"
echo "services: {chatmail: {image: x}}" > "$D/docker/docker-compose.yaml"

# A stand-in docker: the container runs with the appliance's mounts,
# Postfix freezes and thaws at once.
mkdir -p "$W/bin"
cat > "$W/bin/docker" <<SH
#!/bin/sh
for a in "\$@"; do case "\$a" in ps) echo c0ffee; exit 0;; esac; done
case "\$*" in
  "inspect c0ffee") cat <<'JSON'
[{"Id":"c0ffee","Name":"/chatmail-chatmail-1","Image":"sha256:0",
  "State":{"Status":"running","Running":true,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0},
  "Config":{"Image":"chatmail-relay:local","Labels":{"com.docker.compose.project.working_dir":"$D"}},
  "Mounts":[
    {"Type":"bind","Source":"$D/data/chatmail","Destination":"/home","RW":true},
    {"Type":"bind","Source":"$D/data/chatmail-acme","Destination":"/var/lib/acme","RW":true},
    {"Type":"bind","Source":"$D/data/chatmail-dkimkeys","Destination":"/etc/dkimkeys","RW":true},
    {"Type":"bind","Source":"$D/data/chatmail-postfix","Destination":"/var/spool/postfix","RW":true},
    {"Type":"bind","Source":"$D/data/chatmail-state","Destination":"/var/lib/chatmail-docker","RW":true}]}]
JSON
  ;;
esac
exit 0
SH
chmod +x "$W/bin/docker"
export PATH="$W/bin:$PATH"

now() { date +%s%N; }
time_ns() { local s e; s=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(now); echo $(( e - s )); }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
secs() { awk -v n="$1" 'BEGIN { printf "%.3f", n / 1e9 }'; }
pair() {
    local sa=$1 a=$2 sb=$3 b=$4 ta tb
    : > "$W/ta"; : > "$W/tb"; : > "$W/r"
    for _ in $(seq "$REPEAT"); do
        $sa; ta=$(time_ns $a)
        $sb; tb=$(time_ns $b)
        echo "$ta" >> "$W/ta"; echo "$tb" >> "$W/tb"
        awk -v a="$ta" -v b="$tb" 'BEGIN { print b / a }' >> "$W/r"
    done
    echo "$(secs "$(median < "$W/ta")") $(secs "$(median < "$W/tb")") $(median < "$W/r")"
}

find "$D" -type f -exec cat {} + > /dev/null

clean_ours() { rm -rf "$W/out"; mkdir -p "$W/out"; sync; }
clean_theirs() { rm -f "$W/tar.zst"; sync; }
ours_full() { "$BIN" -q --dir "$D" backup --full "$W/out/full.tar.zst"; }
theirs_full() { tar -C "$D/data" -cf - . | zstd -q -T0 -3 > "$W/tar.zst"; }
read -r full_ours full_theirs full_ratio < <(pair clean_ours ours_full clean_theirs theirs_full)
echo "full backup:   ours ${full_ours}s, tar|zstd ${full_theirs}s -> throughput ratio $(printf %.2f "$full_ratio") (goal >= 0.9)"
# backup flushes the archive to disk before it names it: also compare with
# tar | zstd followed by sync -f.
theirs_full_sync() { theirs_full && sync -f "$W/tar.zst"; }
read -r fs_ours fs_theirs fs_ratio < <(pair clean_ours ours_full clean_theirs theirs_full_sync)
echo "               ours ${fs_ours}s, tar|zstd + sync -f ${fs_theirs}s -> ratio $(printf %.2f "$fs_ratio")"
size_ours=$(stat -c %s "$W/out/full.tar.zst"); size_theirs=$(stat -c %s "$W/tar.zst")
echo "               archive ${size_ours} bytes, tar|zstd ${size_theirs} bytes"

# Incremental: a full backup in a directory, 1% change, then an incremental
# into that directory, as from cron; REPEAT times, each into a copy (hard
# links) of the directory holding only the full backup, so that each run
# stores the same change; median.
rm -rf "$W/dir"; mkdir -p "$W/dir"
"$BIN" -q --dir "$D" backup "$W/dir/"
# gen_maildir's change walks ROOT/home/vmail/mail: point it at the mailstore.
ln -sfn "$D/data/chatmail" "$W/home"
python3 benches/gen_maildir.py change "$W" 1
sleep 1
: > "$W/ti"
for i in $(seq "$REPEAT"); do
    cp -al "$W/dir" "$W/dir$i"; sync; sleep "$IDLE"
    s=$(now); "$BIN" -q --dir "$D" backup --json "$W/dir$i/" > "$W/incr.json"; e=$(now)
    echo $(( e - s )) >> "$W/ti"
done
incr=$(median < "$W/ti")
full_ns=$(awk -v s="$full_ours" 'BEGIN { print s * 1e9 }')
[ "$IDLE" = 0 ] || echo "               (each run after ${IDLE} s idle)"
echo "incremental:   $(secs "$incr")s after 1% change, full ${full_ours}s -> ratio $(awk -v a="$incr" -v b="$full_ns" 'BEGIN { printf "%.3f", a / b }') (goal <= 0.1)"
pause=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["queue_pause_ms"])' "$W/incr.json")
echo "queue pause:   ${pause} ms (stand-in docker: the tool's share of the window)"

# Restore: ours into a fresh deployment directory, theirs with tar -x.
# Every run gets a new directory and nothing is removed until the end:
# ext4 passes over recently freed inodes when it allocates new ones, which
# made a tar -x after the previous run's tree was removed up to 5x slower.
fresh_ours() { R1=$(mktemp -d "$W/r1.XXXXXX"); sync; }
fresh_theirs() { R2=$(mktemp -d "$W/r2.XXXXXX"); sync; }
ours_restore() { "$BIN" -q --dir "$R1" restore "$W/out/full.tar.zst"; }
theirs_restore() { zstd -q -d -c "$W/tar.zst" | tar -C "$R2" -xf -; }
theirs_restore_sync() { theirs_restore && sync -f "$R2"; }
read -r r_ours r_theirs r_ratio < <(pair fresh_ours ours_restore fresh_theirs theirs_restore)
echo "restore:       ours ${r_ours}s, zstd -d|tar -x ${r_theirs}s -> throughput ratio $(printf %.2f "$r_ratio") (goal >= 0.9)"
read -r r_ours2 r_theirs2 r_ratio2 < <(pair fresh_ours ours_restore fresh_theirs theirs_restore_sync)
echo "               ours ${r_ours2}s, zstd -d|tar -x + sync -f ${r_theirs2}s -> ratio $(printf %.2f "$r_ratio2")"
