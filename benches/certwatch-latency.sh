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
# With a running appliance, the reload path itself:
#
#   benches/certwatch-latency.sh --live DIR [ROUNDS]
#
# DIR is a deployment whose relay runs (healthy) on this host with a `_`
# domain (self-signed: its certificate in data/chatmail-state/tls/, which
# this replaces and puts back at the end). ROUNDS times each (default 10):
#  - `systemctl reload nginx dovecot postfix` in the container the old way
#    (`docker compose ... exec -T chatmail`) and the way cert-watch does it
#    (`docker exec <container>`), and each unit's reload alone; Dovecot's
#    also with the container's host name taken out of /etc/hosts for the
#    while (as before the appliance's init named it there);
#  - a new certificate written (renamed into place) while
#    `chatmail-docker cert-watch` runs with its default reload and check:
#    when each endpoint (443, 465, 993, STARTTLS 25, 587, 143) first serves
#    it, each asked again and again by a loop of its own.
# Reports median and p99 (ms) of each, and the ratio of the two reload ways.
#
# Needs bash >= 5 (EPOCHREALTIME), openssl, GNU date, bc. BIN overrides the
# binary (default: the newer of the release and debug builds under
# target/<host tuple>/, see .cargo/config.toml).
set -euo pipefail

DOMAIN=example.org
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-}
if [ -z "$BIN" ]; then
    # The most recently built of release and debug.
    tuple=$(rustc -vV | sed -n 's/^host: //p')
    BIN=$(ls -t "$here/target/$tuple/release/chatmail-docker" "$here/target/$tuple/debug/chatmail-docker" 2>/dev/null | head -n 1 || true)
fi
[ -n "$BIN" ] || { echo "build first (cargo build --release) or set BIN" >&2; exit 2; }

stats() { # prints "median p99" of the arguments (ms)
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
        i = int(0.99 * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR;
        printf "%.1f %.1f\n", m, a[i] }'
}
ms_since() { echo "($EPOCHREALTIME - $1) * 1000" | bc -l; }

if [ "${1:-}" = "--live" ]; then
    dir=$(cd "${2:?--live DIR: a deployment whose relay runs}" && pwd)
    rounds=${3:-10}
    domain=$(sed -n 's/^MAIL_DOMAIN=//p' "$dir/.env" | tr -d "'\"" | tail -n 1)
    case "$domain" in
        _*) ;;
        *) echo "--live: MAIL_DOMAIN=$domain in $dir/.env is not a \`_\` domain: its certificate is not this bench's to replace" >&2; exit 2 ;;
    esac
    tls=$dir/data/chatmail-state/tls
    [ -f "$tls/mailserver.pem" ] && [ -f "$tls/mailserver.key" ] || { echo "--live: no self-signed certificate in $tls" >&2; exit 2; }
    id=$(docker ps --quiet --no-trunc --filter label=com.docker.compose.project=chatmail \
        --filter label=com.docker.compose.service=chatmail --filter label=com.docker.compose.oneoff=False | head -n 1)
    [ -n "$id" ] || { echo "--live: no running chatmail container" >&2; exit 2; }
    files=(--file "$dir/docker/docker-compose.yaml")
    [ -f "$dir/docker/compose.generated.yaml" ] && files+=(--file "$dir/docker/compose.generated.yaml")
    [ -f "$dir/docker-compose.override.yaml" ] && files+=(--file "$dir/docker-compose.override.yaml")
    compose=(docker compose --project-name chatmail --project-directory "$dir" "${files[@]}" --env-file "$dir/.env")
    live=$(mktemp -d)
    watcher=""
    cp -p "$tls/mailserver.pem" "$tls/mailserver.key" "$live/"
    put_back() {
        [ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true
        cp -p "$live/mailserver.key" "$tls/.bench.key" && mv -f "$tls/.bench.key" "$tls/mailserver.key"
        cp -p "$live/mailserver.pem" "$tls/.bench.pem" && mv -f "$tls/.bench.pem" "$tls/mailserver.pem"
        docker exec "$id" systemctl reload nginx dovecot postfix || true
        rm -rf "$live"
    }
    trap put_back EXIT

    declare -a via_compose via_exec one_nginx one_dovecot one_postfix
    for _ in $(seq 1 "$rounds"); do
        t=$EPOCHREALTIME; "${compose[@]}" exec -T chatmail systemctl reload nginx dovecot postfix; via_compose+=("$(ms_since "$t")")
        t=$EPOCHREALTIME; docker exec "$id" systemctl reload nginx dovecot postfix; via_exec+=("$(ms_since "$t")")
        for u in nginx dovecot postfix; do
            t=$EPOCHREALTIME; docker exec "$id" systemctl reload "$u"
            eval "one_$u+=(\"\$(ms_since \"\$t\")\")"
        done
    done
    read -r c_med c_p99 < <(stats "${via_compose[@]}")
    read -r e_med e_p99 < <(stats "${via_exec[@]}")
    echo "reload of nginx dovecot postfix in the container, $rounds rounds:"
    printf '  docker compose exec   median %8.1f ms   p99 %8.1f ms\n' "$c_med" "$c_p99"
    printf '  docker exec           median %8.1f ms   p99 %8.1f ms   (%.2f x the compose way)\n' \
        "$e_med" "$e_p99" "$(echo "$e_med / $c_med" | bc -l)"
    for u in nginx dovecot postfix; do
        eval "vals=(\"\${one_$u[@]}\")"
        read -r m p < <(stats "${vals[@]}")
        printf '  %-20s  median %8.1f ms   p99 %8.1f ms\n' "$u alone" "$m" "$p"
    done
    # Dovecot's reload with and without the host name in /etc/hosts (the
    # line the appliance's init adds when Docker's file lacks it).
    hn=$(docker exec "$id" hostname)
    line=$(printf '127.0.1.1\t%s' "$hn")
    if docker exec "$id" grep -qxF "$line" /etc/hosts; then
        declare -a without
        docker exec "$id" sh -c "grep -vxF '$line' /etc/hosts > /tmp/hosts.bench; cat /tmp/hosts.bench > /etc/hosts"
        for _ in $(seq 1 "$rounds"); do
            t=$EPOCHREALTIME; docker exec "$id" systemctl reload dovecot; without+=("$(ms_since "$t")")
        done
        docker exec "$id" sh -c "printf '%s\n' '$line' >> /etc/hosts; rm -f /tmp/hosts.bench"
        read -r m p < <(stats "${without[@]}")
        printf '  %-20s  median %8.1f ms   p99 %8.1f ms   (%s not in /etc/hosts)\n' "dovecot, unnamed" "$m" "$p" "$hn"
    else
        t=$EPOCHREALTIME
        if docker exec "$id" getent hosts "$hn" > /dev/null; then how=resolves; else how="does not resolve"; fi
        printf '  the host name %s %s in the container (%.0f ms)\n' "$hn" "$how" "$(ms_since "$t")"
    fi

    # A new certificate while cert-watch runs: when each endpoint serves it.
    "$BIN" --dir "$dir" cert-watch 2> "$live/watch.log" &
    watcher=$!
    sleep 3
    kill -0 "$watcher" 2> /dev/null || { echo "cert-watch did not start:" >&2; cat "$live/watch.log" >&2; exit 1; }
    endpoints="443: 465: 993: 25:smtp 587:smtp 143:imap"
    served() { # sha256 of the leaf served on port $1 (STARTTLS protocol $2)
        local args=(-connect "127.0.0.1:$1" -servername "$domain")
        [ -n "$2" ] && args+=(-starttls "$2")
        openssl s_client "${args[@]}" < /dev/null 2> /dev/null | openssl x509 -outform der 2> /dev/null | sha256sum | cut -c1-64
    }
    declare -A took
    for r in $(seq 1 "$rounds"); do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=$domain" -addext "subjectAltName=DNS:$domain,DNS:www.$domain,DNS:mta-sts.$domain" -days 30 \
            -keyout "$live/new.key" -out "$live/new.pem" 2> /dev/null
        want=$(openssl x509 -in "$live/new.pem" -outform der | sha256sum | cut -c1-64)
        cp "$live/new.key" "$tls/.bench.key"; cp "$live/new.pem" "$tls/.bench.pem"
        chmod --reference="$live/mailserver.key" "$tls/.bench.key"; chown --reference="$live/mailserver.key" "$tls/.bench.key"
        chmod --reference="$live/mailserver.pem" "$tls/.bench.pem"; chown --reference="$live/mailserver.pem" "$tls/.bench.pem"
        t0=$EPOCHREALTIME
        mv -f "$tls/.bench.key" "$tls/mailserver.key"
        mv -f "$tls/.bench.pem" "$tls/mailserver.pem"
        for e in $endpoints; do
            (
                p=${e%%:*}; proto=${e#*:}
                for _ in $(seq 1 1500); do
                    [ "$(served "$p" "$proto")" = "$want" ] && { ms_since "$t0" > "$live/at-$p"; exit 0; }
                    sleep 0.02
                done
                echo 99999 > "$live/at-$p"
            ) &
        done
        wait $(jobs -p | grep -v "^$watcher\$")
        for e in $endpoints; do p=${e%%:*}; took[$p]+="$(cat "$live/at-$p") "; done
        sleep 1
    done
    echo "a new certificate renamed into place -> served (cert-watch's default reload and check), $rounds rounds:"
    all=()
    for e in $endpoints; do
        p=${e%%:*}
        read -r m q < <(stats ${took[$p]})
        printf '  port %-4s  median %8.1f ms   p99 %8.1f ms\n' "$p" "$m" "$q"
    done
    # The slowest endpoint of each round: when all six serve it.
    for r in $(seq 1 "$rounds"); do
        mx=0
        for e in $endpoints; do
            p=${e%%:*}; v=$(echo ${took[$p]} | cut -d' ' -f"$r")
            mx=$(echo "if ($v > $mx) $v else $mx" | bc -l)
        done
        all+=("$mx")
    done
    read -r m q < <(stats "${all[@]}")
    printf '  all six    median %8.1f ms   p99 %8.1f ms   (target: 1000 ms)\n' "$m" "$q"
    grep -E 'Reloaded|Verified|warning|error' "$live/watch.log" | tail -n 3 | sed 's/^/  cert-watch | /'
    exit 0
fi

ROTATIONS=${1:-50}
IDLE=${2:-60}

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
