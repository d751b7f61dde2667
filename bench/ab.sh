#!/usr/bin/env bash
# Two builds of weir side by side on one row, interleaved: CPU-µs per request and req/s.
# For a change too small to see across two runs of run.sh on a shared machine.
#
#   bench/ab.sh OLD_WEIR NEW_WEIR [ROW] [REPEATS]     ROW defaults to weir-headers, REPEATS to 3
#
# Build the old binary from a worktree, e.g.
#   git worktree add /tmp/old COMMIT && (cd /tmp/old && cargo build --release -p weir --bin weir)
# Each binary runs the row's config (bench/configs/ROW.toml) pinned to CPU 0 with
# RUST_LOG=warn and TOKIO_WORKER_THREADS=1, as in run.sh; wrk -t1 -c64 and the bench
# upstream share CPU 1. After 3 s of warm-up, 10 s are measured; the CPU is the proxy's
# utime + stime from /proc. The two alternate which goes first in each round. Prints one
# line per run; compare the medians. It works for the rows whose weir listens on 18084,
# with the upstream on 18080 and no other server: every weir row but weir-otlp and
# weir-full-redis. A row whose name ends in -tls (weir-empty-tls) is served over HTTPS,
# with a self-signed certificate made with openssl into bench/.run/tls.
#
#   POST_BYTES=512 bench/ab.sh OLD NEW weir-empty    every request a POST with a JSON
#                                                    body of that many bytes (at least 10)
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 2 ] || { sed -n '2,19p' "$0"; exit 2; }
OLD="$1"; NEW="$2"; ROW="${3:-weir-headers}"; REPEATS="${4:-3}"
UPSTREAM="$BENCH/target/release/weir-bench-upstream"
[ -x "$UPSTREAM" ] || (cd "$BENCH" && CARGO_TARGET_DIR="$BENCH/target" cargo build --release -q)
[ -f "$BENCH/configs/$ROW.toml" ] || { echo "ab.sh: no config for $ROW: $BENCH/configs/$ROW.toml" >&2; exit 2; }
for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "ab.sh: $tool is missing (bench/run.sh installs what it needs)" >&2; exit 1; }
done
URL=http://127.0.0.1:18084/
if [[ "$ROW" == *-tls ]]; then
    URL=https://127.0.0.1:18084/
    TLS="$BENCH/.run/tls"
    if [ ! -f "$TLS/server.pem" ]; then
        command -v openssl >/dev/null || { echo "ab.sh: openssl is missing (Debian's openssl)" >&2; exit 1; }
        mkdir -p "$TLS"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
            -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
            -keyout "$TLS/server.key" -out "$TLS/server.pem" 2>/dev/null
    fi
fi
WRK_ARGS=()
if [ -n "${POST_BYTES:-}" ]; then
    [[ "$POST_BYTES" =~ ^[1-9][0-9]+$ ]] || { echo "ab.sh: POST_BYTES takes a number of bytes, 10 or more (got '$POST_BYTES')" >&2; exit 2; }
    export POST_BYTES
    WRK_ARGS=(-s "$BENCH/post.lua")
fi
for port in 18080 18084; do
    if curl -sk -o /dev/null "http://127.0.0.1:$port/" || curl -sk -o /dev/null "https://127.0.0.1:$port/"; then
        echo "ab.sh: something already answers on 127.0.0.1:$port; stop it first" >&2
        exit 1
    fi
done

taskset -c 1 "$UPSTREAM" 127.0.0.1:18080 >/dev/null 2>&1 &
UP=$!
WEIR_PID=
trap 'kill $UP $WEIR_PID 2>/dev/null || true' EXIT
sleep 1
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for i in $(seq 1 "$REPEATS"); do
    order="old new"
    [ $((i % 2)) -eq 0 ] && order="new old"
    for side in $order; do
        bin=$OLD; [ "$side" = new ] && bin=$NEW
        RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "$bin" run "$BENCH/configs/$ROW.toml" >"/tmp/ab-$side.log" 2>&1 &
        WEIR_PID=$!
        ready=
        for _ in $(seq 1 100); do
            curl -sk -o /dev/null "$URL" && { ready=1; break; }
            sleep 0.1
        done
        [ -n "$ready" ] || { echo "ab.sh: $side weir did not answer on 18084 within 10 s (its log: /tmp/ab-$side.log)" >&2; exit 1; }
        taskset -c 1 wrk -t1 -c64 -d3s "${WRK_ARGS[@]}" "$URL" >/dev/null
        c0=$(cpu_ticks "$WEIR_PID")
        out=$(taskset -c 1 wrk -t1 -c64 -d10s "${WRK_ARGS[@]}" "$URL")
        c1=$(cpu_ticks "$WEIR_PID")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        # wrk's count of answers other than 2xx or 3xx, and of socket errors, if any.
        bad=$(echo "$out" | awk '/Non-2xx|Socket errors/' | tr -s ' \n' ' ')
        python3 -c "print(f'$side $ROW #$i: {float($rps):,.0f} req/s, {($c1 - $c0) / $TCK * 1e6 / $reqs:.2f} CPU-us/req $bad')"
        kill "$WEIR_PID"; wait "$WEIR_PID" 2>/dev/null || true
        WEIR_PID=
    done
done
