#!/usr/bin/env bash
# Instructions per request: each row's proxy under valgrind's callgrind, sent a fixed
# number of requests. Unlike req/s, an instruction count does not move when something
# else runs on the machine, so two builds can be compared on a busy one.
#
#   bench/profile.sh                                  weir-empty, weir-headers, weir-full, nginx
#   bench/profile.sh --rows weir-empty,haproxy        any rows of run.sh except direct
#   bench/profile.sh --requests 5000 --top 30         more requests, longer function lists
#   WEIR_BIN=/tmp/weir-old bench/profile.sh           another build of weir (before/after)
#   WEIR_WASM_PERF_MAP=1 bench/profile.sh --rows weir-full   guest functions by name
#   POST_BYTES=512 bench/profile.sh --rows weir-empty,nginx  every request a POST with
#                                                     a JSON body of that many bytes
#
# Writes bench/.profile/ROW.txt (the top functions, by their own instructions and with
# their callees, per request) and the callgrind files ROW.cg.1-THREAD; prints one line
# per row. See bench/README.md, "Profile".
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"
OUTDIR="$BENCH/.profile"
TOOLS="$BENCH/.tools"

ROWS="weir-empty weir-headers weir-full nginx"
REQUESTS=3000          # measured requests per row
WARM=300               # requests before the counters are zeroed (pools, caches, JIT)
CONNECTIONS=16
TOP=25

while [ $# -gt 0 ]; do
    case "$1" in
        --rows) ROWS="${2//,/ }"; shift ;;
        --requests) REQUESTS="$2"; shift ;;
        --connections) CONNECTIONS="$2"; shift ;;
        --top) TOP="$2"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "[profile] $*" >&2; }
OHA_ARGS=()
if [ -n "${POST_BYTES:-}" ]; then
    [[ "$POST_BYTES" =~ ^[1-9][0-9]+$ ]] || { say "POST_BYTES takes a number of bytes, 10 or more (got '$POST_BYTES')"; exit 2; }
    # The JSON object bench/post.lua sends wrk's requests with.
    OHA_ARGS=(-m POST -T application/json -d "{\"pad\":\"$(printf 'x%.0s' $(seq 1 $((POST_BYTES - 10))))\"}")
fi
die() { echo "[profile] error: $*" >&2; exit 1; }
# shellcheck source=common.sh
. "$BENCH/common.sh"

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v curl >/dev/null || missing+=(curl)
command -v cmake >/dev/null || missing+=(cmake)
apt_install "${missing[@]}"
find_peers
find_oha

build_binaries
# shellcheck disable=SC2086
check_noop_component $ROWS

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR/nginx/tmp"

UPSTREAM_PORT=18080
# As in run.sh.
declare -A PORT=([nginx]=18081 [haproxy]=18082 [pingora]=18083 [hyper]=18093 [weir-full-redis]=18087 [weir-otlp]=18091)
port_of() { echo "${PORT[$1]:-18084}"; }

wait_ready() {
    local port="$1" pid="$2" name="$3"
    # valgrind starts a program 20 to 50 times slower.
    for _ in $(seq 1 1200); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at start; see $OUTDIR/$name.log"
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/bench" || true)" = 200 ]; then
            return 0
        fi
        sleep 0.25
    done
    die "$name did not answer on port $port within 5 minutes; see $OUTDIR/$name.log"
}

if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$UPSTREAM_PORT/"; then
    die "something already listens on 127.0.0.1:$UPSTREAM_PORT; stop it first"
fi
"$UPSTREAM" "127.0.0.1:$UPSTREAM_PORT" >"$OUTDIR/upstream.log" 2>&1 &
STARTED+=("$!")
wait_ready "$UPSTREAM_PORT" "$!" upstream

printf '%-16s %12s %16s\n' row "Ir/request" "atomics/request"
for row in $ROWS; do
    port="$(port_of "$row")"
    out="$OUTDIR/$row.cg"
    # --collect-bus counts the atomic read-modify-write instructions (event Ge).
    vg=(valgrind --tool=callgrind --collect-bus=yes --separate-threads=yes --compress-strings=no --compress-pos=no
        --callgrind-out-file="$out")
    case "$row" in
        nginx)
            # One process: no master, so callgrind sees the worker.
            "${vg[@]}" "$NGINX" -p "$OUTDIR/nginx/" -e stderr -c "$BENCH/peers/nginx.conf" \
                -g 'master_process off;' >"$OUTDIR/$row.log" 2>&1 &
            ;;
        haproxy)
            "${vg[@]}" "$HAPROXY" -db -f "$BENCH/peers/haproxy.cfg" >"$OUTDIR/$row.log" 2>&1 &
            ;;
        pingora)
            "${vg[@]}" "$PINGORA" "127.0.0.1:$port" "127.0.0.1:$UPSTREAM_PORT" >"$OUTDIR/$row.log" 2>&1 &
            ;;
        hyper)
            "${vg[@]}" "$HYPER" "127.0.0.1:$port" "127.0.0.1:$UPSTREAM_PORT" >"$OUTDIR/$row.log" 2>&1 &
            ;;
        weir-*)
            # valgrind cannot map the pooling allocator's reservation: see ON_DEMAND_ENV
            # in host/src/wasm/mod.rs. One CPU, so one worker, as in run.sh.
            RUST_LOG=warn TOKIO_WORKER_THREADS=1 WEIR_WASM_ON_DEMAND=1 taskset -c 0 \
                "${vg[@]}" "$WEIR" run "$BENCH/configs/$row.toml" >"$OUTDIR/$row.log" 2>&1 &
            ;;
        *) die "unknown row $row" ;;
    esac
    pid=$!
    STARTED+=("$pid")
    wait_ready "$port" "$pid" "$row"
    url="http://127.0.0.1:$port/bench"
    "$OHA" -n "$WARM" -c "$CONNECTIONS" --no-tui "${OHA_ARGS[@]}" "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    "$OHA" -n "$REQUESTS" -c "$CONNECTIONS" --no-tui --output-format json "${OHA_ARGS[@]}" "$url" >"$OUTDIR/$row.oha.json"
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    # The dump happens when the program next runs: a request wakes it up.
    for _ in $(seq 1 100); do
        compgen -G "$out.1-*" >/dev/null && break
        curl -s -o /dev/null "$url" || true
        sleep 0.2
    done
    sleep 1
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    ok="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["statusCodeDistribution"].get("200", 0))' "$OUTDIR/$row.oha.json")"
    [ "$ok" = "$REQUESTS" ] || say "warning: $row answered $ok of $REQUESTS requests with 200"
    # One file per thread; every thread counts (weir's epoch ticker, which follows the
    # clock rather than the requests, comes to about 100 instructions a request).
    # Under WEIR_WASM_PERF_MAP=1 weir names its compiled guest code in a perf map.
    jit=()
    [ -f "/tmp/perf-$pid.map" ] && [ "${WEIR_WASM_PERF_MAP:-}" = 1 ] && jit=(--jit-map "/tmp/perf-$pid.map")
    python3 "$BENCH/callgrind_top.py" "$REQUESTS" "$out".1-* --top "$TOP" "${jit[@]}" >"$OUTDIR/$row.txt"
    per="$(awk 'NR == 1 { gsub(",", "", $2); print $2 }' "$OUTDIR/$row.txt")"
    atomics="$(awk -v n="$REQUESTS" '/^summary:/ { g += $3 } END { printf "%.1f", g / n }' "$out".1-*)"
    printf '%-16s %12s %16s\n' "$row" "$per" "$atomics"
done
say "the top functions of each row: $OUTDIR/ROW.txt"
