#!/usr/bin/env bash
# Slow and abusive clients against weir: slowhttptest's slow-header, slow-body and
# range modes, each with a normal client (wrk) measuring availability meanwhile.
#
#   bench/slow-clients.sh                 1000 slow connections per mode, 30 s each
#   bench/slow-clients.sh --connections 3000 --seconds 60
#
# For each mode it reports the normal client's req/s and success rate (non-2xx answers
# and socket errors are failures; the issue asks for >= 99 %), the most connections
# weir held to the upstream at once (sampled every second with `ss`), and the most
# client connections weir had open and refused (from its metrics). weir runs with its
# defaults (`min_body_rate`, `body_read_timeout`, `max_connections`) and one route with
# `buffer_request = true`, so that a dribbled body never takes an upstream connection.
# Needs root (or sudo) for apt-get when slowhttptest or wrk are missing. Everything runs
# on 127.0.0.1.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"
RUN="$BENCH/.run/slow-clients"
TOOLS="$BENCH/.tools"
CONNECTIONS=1000
SECONDS_PER_MODE=30
PORT=18094
ADMIN_PORT=18095
UPSTREAM_PORT=18080

while [ $# -gt 0 ]; do
    case "$1" in
        --connections) CONNECTIONS="$2"; shift ;;
        --seconds) SECONDS_PER_MODE="$2"; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "[slow-clients] $*" >&2; }
die() { echo "[slow-clients] error: $*" >&2; exit 1; }

# shellcheck source=common.sh
. "$BENCH/common.sh"

missing=()
command -v slowhttptest >/dev/null || missing+=(slowhttptest)
command -v wrk >/dev/null || missing+=(wrk)
command -v ss >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
apt_install "${missing[@]}"

say "building weir and the bench upstream (release)"
(cd "$ROOT" && cargo build --release -q -p weir --bin weir)
target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
WEIR="$target/release/weir"
(cd "$BENCH" && CARGO_TARGET_DIR="$BENCH/target" cargo build --release -q -p weir-bench-upstream)
UPSTREAM="$BENCH/target/release/weir-bench-upstream"

# slowhttptest opens a descriptor per connection, and weir one per client connection.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rm -rf "$RUN"
mkdir -p "$RUN"
cat >"$RUN/weir.toml" <<EOF
# Written by bench/slow-clients.sh: weir's defaults, one buffered route.
[listen]
addr = "127.0.0.1:$PORT"

[admin]
addr = "127.0.0.1:$ADMIN_PORT"
recent_requests = 0

[upstreams.bench]
url = "http://127.0.0.1:$UPSTREAM_PORT"
max_connections = 1024

[[routes]]
name = "bench"
upstream = "bench"
buffer_request = true
EOF

"$UPSTREAM" "127.0.0.1:$UPSTREAM_PORT" >"$RUN/upstream.log" 2>&1 &
STARTED+=("$!")
RUST_LOG=warn "$WEIR" run "$RUN/weir.toml" >"$RUN/weir.log" 2>&1 &
STARTED+=("$!")
for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/bench" || true)" = 200 ] && break
    sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/bench" || true)" = 200 ] ||
    die "weir did not answer; see $RUN/weir.log"

metric() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}
upstream_connections() {
    ss -Htn state established "( dport = :$UPSTREAM_PORT )" | wc -l
}

printf '| mode | normal client req/s | success | most upstream connections | most client connections | refused |\n' >"$RUN/report.md"
printf '| --- | ---: | ---: | ---: | ---: | ---: |\n' >>"$RUN/report.md"
worst=100
for mode in header body range; do
    case "$mode" in
        header) args=(-H -i 10 -s 8192 -t GET) ;;
        body) args=(-B -i 10 -s 65536 -t POST) ;;
        range) args=(-R -a 10 -b 3000 -t GET) ;;
    esac
    say "$mode: $CONNECTIONS slow connections for ${SECONDS_PER_MODE}s, a normal client beside them"
    refused0="$(metric weir_client_connections_refused_total)"
    slowhttptest "${args[@]}" -c "$CONNECTIONS" -r 500 -l "$SECONDS_PER_MODE" -x 24 -p 3 \
        -u "http://127.0.0.1:$PORT/bench" -g -o "$RUN/slowhttptest-$mode" >"$RUN/slowhttptest-$mode.log" 2>&1 &
    slow=$!
    # Let the slow connections pile up before measuring.
    sleep 5
    most_up=0 most_client=0
    (
        for _ in $(seq 1 $((SECONDS_PER_MODE - 10))); do
            echo "$(upstream_connections) $(metric weir_client_connections)"
            sleep 1
        done
    ) >"$RUN/samples-$mode.txt" &
    sampler=$!
    out="$(wrk -t1 -c4 -d"$((SECONDS_PER_MODE - 10))s" "http://127.0.0.1:$PORT/bench")"
    wait "$sampler" || true
    wait "$slow" || true
    echo "$out" >"$RUN/wrk-$mode.txt"
    requests="$(awk '/requests in/ { print $1 }' <<<"$out")"
    rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
    errors="$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")"
    read -r most_up most_client < <(awk '{ if ($1 > u) u = $1; if ($2 > c) c = $2 } END { print u + 0, c + 0 }' "$RUN/samples-$mode.txt")
    refused=$(( $(metric weir_client_connections_refused_total) - refused0 ))
    success="$(python3 -c "r = $requests; e = $errors; print(f'{100 * (r - e) / r:.2f}' if r else '0.00')")"
    worst="$(python3 -c "print(min($worst, $success))")"
    printf '| %s | %s | %s %% | %s | %s | %s |\n' "$mode" "$rps" "$success" "$most_up" "$most_client" "$refused" >>"$RUN/report.md"
    say "  $mode: normal client $rps req/s, $success % answered 2xx; upstream connections at most $most_up; client connections at most $most_client; $refused refused"
done

cat "$RUN/report.md"
if python3 -c "import sys; sys.exit(0 if $worst >= 99 else 1)"; then
    say "the normal client was served at >= 99 % in every mode (worst $worst %)"
else
    say "the normal client fell below 99 % (worst $worst %); see $RUN"
    exit 1
fi
