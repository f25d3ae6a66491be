#!/usr/bin/env bash
# Appliance benchmark with the real relay: image size, cold build, start and
# restart to healthy.
#
#   benches/appliance.sh DIR [RUNS]
#
# DIR is a deployment directory with the relay in DIR/relay and a
# chatmail.ini (for machines without internet, prepare the relay with
# tests/relay-offline/apply.py first). Set CHATMAIL_BUILD_CA when PyPI is
# reached through a proxy that re-signs TLS, and CHATMAIL_BASE_IMAGE for a
# local base image. RUNS (default 3) repeats each start measurement; the
# median is reported. SKIP_BUILD=1 measures with the image as it is.
#
# Figures, each beside a baseline measured in the same run on the same
# engine, so the ratio holds when the machine's speed drifts:
#  - cold build (`setup --rebuild=full`: build, deploy in a side
#    container, start)                  | baseline: none (minutes, reported)
#  - image size                         | baseline: the base image
#  - setup with the image present, from no container to healthy (the
#    image is the one the first setup deployed beside the relay for these
#    settings: the container only starts the services)
#                                       | baseline: the base image's systemd
#                                         booting to multi-user.target with
#                                         the same container settings
#  - restart to healthy (`docker restart`, the deploy skipped)
#                                       | baseline: the same boot
# Needs bash >= 5 (EPOCHREALTIME), docker with Compose v2. BIN overrides the
# tool (default: the newer of the release and debug builds).
set -euo pipefail

DIR=$(cd "${1:?usage: benches/appliance.sh DIR [RUNS]}" && pwd)
RUNS=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-}
if [ -z "$BIN" ]; then
    BIN=$(ls -t "$here"/target/*/release/chatmail-docker "$here"/target/*/debug/chatmail-docker 2>/dev/null | head -1 || true)
fi
[ -x "$BIN" ] || { echo "build the tool first (cargo build --release)" >&2; exit 2; }
BASE=${CHATMAIL_BASE_IMAGE:-debian:bookworm-slim}
IMAGE=${CHATMAIL_IMAGE:-chatmail-relay:local}
tool() { "$BIN" --dir "$DIR" -q "$@"; }
now() { echo "$EPOCHREALTIME"; }
since() { echo "$(now) - $1" | bc -l; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

container() { docker compose --project-directory "$DIR" -p chatmail -f "$DIR/docker/docker-compose.yaml" ps -q chatmail; }
wait_healthy() {
    local c=$1
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ]; do sleep 0.2; done
}

if [ -n "${SKIP_BUILD:-}" ]; then
    echo "== image present (SKIP_BUILD set): no cold build"
    tool setup --skip-check cgroup-v2 >/dev/null
    build=0
else
    echo "== cold build (setup --rebuild=full)"
    t=$(now)
    tool setup --rebuild=full --skip-check cgroup-v2 >/dev/null
    build=$(since "$t")
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
base_size=$(docker image inspect -f '{{.Size}}' "$BASE")

setup_times=() restart_times=() boot_times=()
for _ in $(seq 1 "$RUNS"); do
    tool down >/dev/null
    t=$(now)
    tool setup --skip-check cgroup-v2 >/dev/null
    setup_times+=("$(since "$t")")

    c=$(container)
    t=$(now)
    docker restart --time 60 "$c" >/dev/null
    wait_healthy "$c"
    restart_times+=("$(since "$t")")

    # Baseline: the base image's systemd, with the appliance's container
    # settings, up to multi-user.target.
    t=$(now)
    b=$(docker run -d --rm --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup \
        --tmpfs /tmp --tmpfs /run --tmpfs /run/lock --network none "$BASE" /sbin/init)
    until docker exec "$b" systemctl is-active --quiet multi-user.target 2>/dev/null; do sleep 0.2; done
    boot_times+=("$(since "$t")")
    docker rm -f "$b" >/dev/null
done

s=$(printf '%s\n' "${setup_times[@]}" | median)
r=$(printf '%s\n' "${restart_times[@]}" | median)
b=$(printf '%s\n' "${boot_times[@]}" | median)
printf '\n%-40s %10s %12s %8s\n' figure value baseline ratio
printf '%-40s %9.0fs %12s %8s\n' "cold build" "$build" - -
printf '%-40s %8.0fMB %10.0fMB %8.2f\n' "image size" "$(echo "$size/1000000" | bc -l)" \
    "$(echo "$base_size/1000000" | bc -l)" "$(echo "$size/$base_size" | bc -l)"
printf '%-40s %9.1fs %11.1fs %8.1f\n' "setup, image present -> healthy (median)" "$s" "$b" "$(echo "$s/$b" | bc -l)"
printf '%-40s %9.1fs %11.1fs %8.1f\n' "restart -> healthy (median)" "$r" "$b" "$(echo "$r/$b" | bc -l)"
echo "runs: setup ${setup_times[*]} | restart ${restart_times[*]} | systemd boot ${boot_times[*]}"
