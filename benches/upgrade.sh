#!/usr/bin/env bash
# Upgrade benchmark with the real relay: the swap's mail downtime, the
# automatic rollback, and the build the running relay did not notice.
#
#   benches/upgrade.sh DIR [RUNS]
#
# DIR is a deployment directory whose relay/ is a git checkout (for
# machines without internet, with tests/relay-offline/apply.py applied and
# committed) and whose relay is up and healthy (`chatmail-docker setup`).
# The script commits two releases on a side line of relay/ (tags
# bench-good-N, bench-broken-N; the checkout is left where it was): one
# that changes the web page, one whose configure stage fails. Set
# CHATMAIL_BUILD_CA when PyPI is reached through a proxy that re-signs TLS.
#
# Figures (RUNS, default 3, repetitions of the swap; medians):
#  - build while serving (the first upgrade; minutes, reported)
#  - swap downtime, image already built: upgrade to the good release and
#    --rollback, alternately; and upgrade --no-deploy-beside (the new container
#    deploys itself) | baselines, ratios against the second: `docker
#    compose up --force-recreate` of the running image, and `docker
#    restart` (no deploy: the floor any swap has)
#  - rollback, from the failed verdict to the old release serving again
#    (upgrade --no-deploy-beside to the broken release, which fails in the new
#    container; with the deploy beside the relay it is never swapped in)
# Downtime is measured from outside as well as by the tool: a watcher polls
# 127.0.0.1:25 (SMTP greeting) and :993 every 100 ms and reports the time
# during which either did not answer.
set -euo pipefail

DIR=$(cd "${1:?usage: benches/upgrade.sh DIR [RUNS]}" && pwd)
RUNS=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-}
if [ -z "$BIN" ]; then
    BIN=$(ls -t "$here"/target/*/release/chatmail-docker "$here"/target/*/debug/chatmail-docker 2>/dev/null | head -1 || true)
fi
[ -x "$BIN" ] || { echo "build the tool first (cargo build --release)" >&2; exit 2; }
tool() { "$BIN" --dir "$DIR" -q "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }

# The watcher: writes the seconds 25 or 993 did not answer to $WATCH_OUT
# on SIGTERM.
WATCH_OUT=$(mktemp)
trap 'rm -f "$WATCH_OUT"' EXIT
watch_ports() {
    python3 - > "$WATCH_OUT" <<'PY' &
import signal, socket, sys, time
down, total, stop = None, 0.0, False
def up():
    try:
        with socket.create_connection(("127.0.0.1", 25), timeout=0.5) as s:
            s.settimeout(2)
            if not s.recv(3).startswith(b"220"):
                return False
        socket.create_connection(("127.0.0.1", 993), timeout=0.5).close()
        return True
    except OSError:
        return False
def finish(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, finish)
while True:
    now, ok = time.monotonic(), up()
    if not ok and down is None:
        down = now
    if ok and down is not None:
        total, down = total + now - down, None
    if stop:
        if down is not None:
            total += now - down
        print(f"{total:.2f}")
        sys.exit(0)
    time.sleep(0.1)
PY
    WATCHER=$!
}
# Not in a subshell: `wait` only knows this shell's children. Sets WATCHED.
stop_watch() { kill -TERM "$WATCHER"; wait "$WATCHER"; WATCHED=$(cat "$WATCH_OUT"); }

relay="$DIR/relay"
start_commit=$(git -C "$relay" rev-parse HEAD)
[ -z "$(git -C "$relay" status --porcelain)" ] || { echo "relay/ has local changes" >&2; exit 2; }
n=$(date +%s)
git -C "$relay" -c advice.detachedHead=false checkout -q --detach
printf '\nBenchmark release %s.\n' "$n" >> "$relay/www/src/index.md"
git -C "$relay" -c user.name=bench -c user.email=bench@example.org commit -qam "bench: good release"
git -C "$relay" tag "bench-good-$n"
sed -i 's/^def configure_remote_units(deployer, mail_domain, units) -> None:$/&\n    raise RuntimeError("benchmark release that cannot configure")/' \
    "$relay/cmdeploy/src/cmdeploy/basedeploy.py"
git -C "$relay" -c user.name=bench -c user.email=bench@example.org commit -qam "bench: broken release"
git -C "$relay" tag "bench-broken-$n"
git -C "$relay" -c advice.detachedHead=false checkout -q "$start_commit"

recreate() {
    docker compose --project-directory "$DIR" -p chatmail -f "$DIR/docker/docker-compose.yaml" \
        --env-file "$DIR/.env" up -d --force-recreate chatmail >/dev/null 2>&1
    local c
    c=$(docker compose --project-directory "$DIR" -p chatmail -f "$DIR/docker/docker-compose.yaml" --env-file "$DIR/.env" ps -q chatmail)
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ]; do sleep 0.2; done
}

restart() {
    local c
    c=$(docker compose --project-directory "$DIR" -p chatmail -f "$DIR/docker/docker-compose.yaml" --env-file "$DIR/.env" ps -q chatmail)
    docker restart "$c" >/dev/null
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ]; do sleep 0.2; done
}

echo "== baselines: recreate of the running image, restart ($RUNS runs each)"
base=(); floor=()
for _ in $(seq "$RUNS"); do
    watch_ports; recreate; sleep 1; stop_watch; base+=("$WATCHED")
    watch_ports; restart; sleep 1; stop_watch; floor+=("$WATCHED")
done

echo "== first upgrade (builds the good release while the relay serves)"
watch_ports
first=$(tool upgrade --ref "bench-good-$n" --no-fetch --no-backup --json)
stop_watch; outside=$WATCHED
build=$(json_field build_seconds <<<"$first")
swap=("$(json_field downtime_seconds <<<"$first")"); swap_out=("$outside")

echo "== swaps with the image built ($RUNS runs: --rollback, upgrade)"
for _ in $(seq "$RUNS"); do
    watch_ports; r=$(tool upgrade --rollback --json); stop_watch; swap_out+=("$WATCHED")
    swap+=("$(json_field downtime_seconds <<<"$r")")
    watch_ports; r=$(tool upgrade --ref "bench-good-$n" --no-fetch --no-backup --json); stop_watch; swap_out+=("$WATCHED")
    swap+=("$(json_field downtime_seconds <<<"$r")")
done

echo "== swaps without the deploy beside the relay ($RUNS runs: --rollback, upgrade --no-deploy-beside)"
plain=()
for _ in $(seq "$RUNS"); do
    tool upgrade --rollback >/dev/null
    r=$(tool upgrade --ref "bench-good-$n" --no-fetch --no-backup --no-deploy-beside --json)
    plain+=("$(json_field downtime_seconds <<<"$r")")
done

echo "== automatic rollback (the broken release)"
rb=()
for _ in $(seq "$RUNS"); do
    watch_ports
    r=$(tool upgrade --ref "bench-broken-$n" --no-fetch --no-backup --no-deploy-beside --json || true)
    stop_watch
    rb+=("$(json_field rollback_seconds <<<"$r")")
done

tool upgrade --rollback >/dev/null   # back to where the relay was
b=$(printf '%s\n' "${base[@]}" | median)
f=$(printf '%s\n' "${floor[@]}" | median)
s=$(printf '%s\n' "${swap[@]}" | median)
so=$(printf '%s\n' "${swap_out[@]}" | median)
r=$(printf '%s\n' "${rb[@]}" | median)
pl=$(printf '%s\n' "${plain[@]}" | median)
echo
printf 'build while serving          %6.0f s (the relay kept answering)\n' "$build"
printf 'recreate, same image (base)  %6.1f s mail downtime\n' "$b"
printf 'docker restart (floor)       %6.1f s mail downtime\n' "$f"
printf 'upgrade swap (tool)          %6.1f s   ratio %.2f   goal <= 10 s\n' "$s" "$(echo "$s / $f" | bc -l)"
printf 'upgrade swap (watcher)       %6.1f s   ratio %.2f\n' "$so" "$(echo "$so / $f" | bc -l)"
printf 'swap, deploy in the container %6.1f s   ratio %.2f   (upgrade --no-deploy-beside)\n' "$pl" "$(echo "$pl / $f" | bc -l)"
printf 'automatic rollback           %6.1f s   ratio %.2f   goal <= 15 s\n' "$r" "$(echo "$r / $f" | bc -l)"
