#!/usr/bin/env bash
# weir's benchmark: weir against nginx, HAProxy, pingora and a bare hyper proxy, on one core each, plus
# weir's start-up time and the quickstart's memory, checked against issue #6's targets,
# with one command. See bench/README.md for what it measures and how to read it.
#
#   bench/run.sh            the full run (about 30 minutes), writes bench/RESULTS.md
#   bench/run.sh --quick    one short repeat, to check the script works (numbers are rough)
#   bench/run.sh --rows direct,nginx,weir-empty    only these rows
#   bench/run.sh --rows weir-empty,weir-fanout     fan-out to 500 targets, beside the
#                                                  empty chain
#   bench/run.sh --rows direct,nginx,weir-empty --open-share 25 --out FILE
#                           the open loop at a quarter of nginx's maximum, not half
#                           (the p99 targets are then not judged)
#   bench/run.sh --pause-damon   the kernel's DAMON monitor off for the run, back on after
#                           (root; RESULTS.md says so): a quieter machine on VMs that run it
#
# Needs 2 cores, root (or sudo) for apt-get when nginx, haproxy or wrk are missing, and
# a quiet machine: anything else running shows up in every number.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"
RUN="$BENCH/.run"        # logs, pid files, raw results of the last run

ALL_ROWS="direct nginx haproxy pingora hyper weir-empty weir-otlp weir-async weir-fanout weir-noop weir-headers weir-retry weir-limiter weir-breaker weir-cache-miss weir-full weir-full-redis weir-cache-hit"
STARTS=11                # `weir run` starts timed for target (f), after one that fills the cache
QUICKSTART_PORT=18085    # the quickstart's listener and admin API, moved off 8080 and 9901
QUICKSTART_ADMIN_PORT=18086
CONNECTIONS=64
PROXY_CPU=0              # the proxy under test
LOAD_CPU=1               # wrk, the open-loop client and the upstream
WARMUP=5                 # seconds of load before each measurement, not recorded
DURATION=10              # seconds per closed-loop measurement
OPEN_DURATION=10         # seconds per open-loop measurement
REPEATS=3
FANOUT_TARGETS=500       # row weir-fanout: the upstreams one request goes to (mode `all`),
FANOUT_PORT=19000        # on ports FANOUT_PORT.. of the bench upstream,
FANOUT_CONNECTIONS=8     # with this many connections in its closed loop
QUICK=0
PAUSE_DAMON=0
ROWS="$ALL_ROWS"
OUT=""                   # default: bench/RESULTS.md, except for --quick
OPEN_SHARE=50            # the open loop's rate, in % of the base row's closed-loop maximum
TAIL_ROWS="direct nginx weir-empty"  # the rows the added-p99 targets judge: two more
TAIL_EXTRA=2             # open-loop repeats each, as one 10 s repeat's p99 moves by
                         # milliseconds on this VM (bench/stalls.sh shows why)

while [ $# -gt 0 ]; do
    case "$1" in
        --quick)
            QUICK=1; WARMUP=1; DURATION=3; OPEN_DURATION=3; REPEATS=1; STARTS=3; TAIL_EXTRA=0 ;;
        --rows)
            ROWS="${2//,/ }"; shift ;;
        --repeats)
            REPEATS="$2"; shift ;;
        --out)
            OUT="$2"; shift ;;
        --open-share)
            OPEN_SHARE="$2"; shift ;;
        --pause-damon)
            PAUSE_DAMON=1 ;;
        -h|--help)
            sed -n '2,18p' "$0"; exit 0 ;;
        *)
            echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "[bench] $*" >&2; }
die() { echo "[bench] error: $*" >&2; exit 1; }

[[ "$OPEN_SHARE" =~ ^[1-9][0-9]?$ ]] || die "--open-share takes a percentage, 1 to 99 (got $OPEN_SHARE)"

if [ "$(nproc --all)" -lt 2 ]; then
    die "needs at least 2 cores (the proxy on CPU $PROXY_CPU, the load on CPU $LOAD_CPU)"
fi
if [ "$(nproc --all)" -gt 2 ]; then
    say "note: $(nproc --all) cores; only CPUs $PROXY_CPU and $LOAD_CPU are used"
fi
if [ "$QUICK" = 1 ]; then
    say "--quick: one short repeat; the numbers are a smoke test, not results"
fi
# A smoke run never overwrites the recorded results unless asked to with --out.
if [ -z "$OUT" ] && [ "$QUICK" = 0 ]; then
    OUT="$BENCH/RESULTS.md"
fi

# === install what is missing ===

# shellcheck source=common.sh
. "$BENCH/common.sh"

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v taskset >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
# pingora builds zlib-ng (through flate2) with cmake.
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(build-essential)
apt_install "${missing[@]}"
# The weir-full-redis row's Redis (Debian's redis-server, never started as a service).
"$BENCH/../scripts/setup-redis.sh"
# Debian's packages start their services on install where they can; the benchmark
# starts its own, and a system nginx or HAProxy on this machine would steal cycles.
for svc in nginx haproxy; do
    if pgrep -x "$svc" >/dev/null; then
        say "warning: a $svc is already running (pid $(pgrep -x "$svc" | tr '\n' ' ')); it will disturb the numbers"
    fi
done
find_peers

# === build ===

build_binaries
# shellcheck disable=SC2086
check_noop_component $ROWS

# === processes ===

rm -rf "$RUN"
mkdir -p "$RUN/nginx/tmp"
# phase row repeat rps p50_us p99_us cpu_us_per_req rss_kib errors (report.py says what
# the `ready` and `quickstart` lines hold)
RESULTS="$RUN/results.tsv"
: >"$RESULTS"

UPSTREAM_PORT=18080
declare -A PORT=(
    [direct]=$UPSTREAM_PORT [nginx]=18081 [haproxy]=18082 [pingora]=18083 [hyper]=18093
    [weir-full-redis]=18087 [weir-otlp]=18091
)
REDIS_PORT=18090         # the weir-full-redis row's state
OTLP_ADMIN_PORT=18092    # the weir-otlp row's admin API, for its weir_otlp_* counters
port_of() { echo "${PORT[$1]:-18084}"; }

# Waits until the row's port answers a request with 200 (202 for weir-async, whose
# every answer is a job accepted).
wait_ready() {
    local port="$1" pid="$2" name="$3" want=200
    [ "$name" = weir-async ] && want=202
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited at start; see $RUN/$name.log"
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/bench" || true)" = "$want" ]; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not answer $want on port $port within 30 s; see $RUN/$name.log"
}

# Starts the peer of row $1 pinned to the proxy's core; sets PEER_PID ("" for direct).
start_peer() {
    local row="$1" log="$RUN/$1.log"
    PEER_PID=""
    [ "$row" = direct ] && return 0
    check_port_free "$(port_of "$row")"
    case "$row" in
        nginx)
            taskset -c "$PROXY_CPU" "$NGINX" -p "$RUN/nginx/" -e stderr -c "$BENCH/peers/nginx.conf" >"$log" 2>&1 &
            ;;
        haproxy)
            taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$BENCH/peers/haproxy.cfg" >"$log" 2>&1 &
            ;;
        pingora)
            taskset -c "$PROXY_CPU" "$PINGORA" "127.0.0.1:${PORT[pingora]}" "127.0.0.1:$UPSTREAM_PORT" >"$log" 2>&1 &
            ;;
        hyper)
            taskset -c "$PROXY_CPU" "$HYPER" "127.0.0.1:${PORT[hyper]}" "127.0.0.1:$UPSTREAM_PORT" >"$log" 2>&1 &
            ;;
        weir-async)
            # As the other weir rows, with an empty journal at each start: the jobs of
            # the previous measurement would be re-read and re-run at start otherwise.
            rm -f "$RUN/weir-async.redb"
            RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" \
                "$WEIR" run "$BENCH/configs/$row.toml" >"$log" 2>&1 &
            ;;
        weir-*)
            # warn: no per-request log line. One tokio worker (the default would be one
            # per CPU in the affinity mask, which is also 1 under taskset).
            RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" \
                "$WEIR" run "$BENCH/configs/$row.toml" >"$log" 2>&1 &
            ;;
        *)
            die "unknown row $row (rows: $ALL_ROWS)" ;;
    esac
    PEER_PID=$!
    STARTED+=("$PEER_PID")
    wait_ready "$(port_of "$row")" "$PEER_PID" "$row"
}

# Stops the peer at once: its numbers are already taken. pingora drains on SIGTERM (for
# minutes by default) but stops on SIGINT; nginx, HAProxy, the bare hyper proxy and weir
# stop on either.
stop_peer() {
    [ -z "${PEER_PID:-}" ] && return 0
    kill -INT "$PEER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$PEER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$PEER_PID" 2>/dev/null || true
    wait "$PEER_PID" 2>/dev/null || true
    PEER_PID=""
}

# Refuses to start when something already listens on a port the benchmark uses: a
# leftover peer would answer in place of the one under test.
check_port_free() {
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; then
        die "something already listens on 127.0.0.1:$1 (a leftover peer?); stop it first"
    fi
}

# utime + stime, in clock ticks, of the process tree (all threads).
cpu_ticks() {
    local user system
    read -r user system <<<"$(cpu_ticks_split "$1")"
    echo $((user + system))
}

# Peak resident set (VmHWM), in KiB, summed over the process tree.
peak_rss_kib() {
    local total=0 pid kib
    for pid in $(proc_tree "$1"); do
        kib="$(awk '/^VmHWM:/ { print $2 }' /proc/"$pid"/status 2>/dev/null || true)"
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

CLK_TCK="$(getconf CLK_TCK)"

# wrk's "1.23ms" / "456.00us" / "1.10s" as microseconds.
to_us() {
    python3 -c '
import re, sys
m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", sys.argv[1])
f = {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]
print(round(float(m.group(1)) * f, 1))' "$1"
}

# The state operations (Redis round trips) weir-full-redis has made so far, from its
# weir_state_operations_total.
state_round_trips() {
    curl -s "http://127.0.0.1:18088/metrics" |
        awk '/^weir_state_operations_total/ { n += $NF } END { printf "%d\n", n }'
}

# The weir-otlp row's spans so far: exported, dropped for a full queue, dropped for a
# failed export (its weir_otlp_spans_*_total, warm-up included).
otlp_spans() {
    curl -s "http://127.0.0.1:$OTLP_ADMIN_PORT/metrics" | awk '
        /^weir_otlp_spans_exported_total/ { e += $NF }
        /^weir_otlp_spans_dropped_total.*queue_full/ { q += $NF }
        /^weir_otlp_spans_dropped_total.*export_failed/ { f += $NF }
        END { printf "%d\t%d\t%d\n", e, q, f }'
}

# One closed-loop measurement of row $1 (peer already warm): appends to $RESULTS.
closed_loop() {
    local row="$1" repeat="$2" port out t0 t1
    port="$(port_of "$row")"
    local url="http://127.0.0.1:$port/bench"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
    [ -n "$PEER_PID" ] && t0="$(cpu_ticks "$PEER_PID")"
    local c0 c1
    [ "$row" = weir-full-redis ] && c0="$(state_round_trips)"
    out="$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url")"
    [ "$row" = weir-full-redis ] && c1="$(state_round_trips)"
    [ -n "$PEER_PID" ] && t1="$(cpu_ticks "$PEER_PID")"
    echo "$out" >"$RUN/wrk-$row-$repeat.txt"
    local rps requests p50 p99 errors cpu="" rss=""
    rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
    requests="$(awk '/requests in/ { print $1 }' <<<"$out")"
    p50="$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
    p99="$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
    errors="$(wrk_errors "$out")"
    if [ -n "$PEER_PID" ]; then
        cpu="$(python3 -c "print(round(($t1 - $t0) * 1e6 / $CLK_TCK / $requests, 2))")"
        rss="$(peak_rss_kib "$PEER_PID")"
    fi
    printf 'closed\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$row" "$repeat" "$rps" "$p50" "$p99" "$cpu" "$rss" "$errors" >>"$RESULTS"
    if [ "$row" = weir-full-redis ]; then
        # State round trips per request.
        printf 'redis\t%s\t%s\t%s\t\t\t\t\t0\n' "$row" "$repeat" \
            "$(python3 -c "print(round(($c1 - $c0) / $requests, 2))")" >>"$RESULTS"
    fi
    if [ "$row" = weir-otlp ]; then
        # Spans exported and dropped: a row that dropped them did less work.
        local spans
        spans="$(otlp_spans)"
        printf 'otlp\t%s\t%s\t%s\t\t\t0\n' "$row" "$repeat" "$spans" >>"$RESULTS"
        say "  $row #$repeat spans exported, dropped (queue full), dropped (export failed): $(tr '\t' ' ' <<<"$spans")"
    fi
    say "  $row #$repeat: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu:-–} CPU-us/req, errors $errors"
}

# CPU $1's line of /proc/stat: the time it ran something and its total time, in clock
# ticks (user to steal; guest time is already in user). Idle, I/O wait and steal (the
# hypervisor running something else) are not busy.
cpu_busy_total() {
    awk -v cpu="cpu$1" '$1 == cpu {
        total = 0; for (i = 2; i <= 9; i++) total += $i
        print total - $5 - $6 - $9, total }' /proc/stat
}

# CPU $1's steal time so far, in clock ticks: time the hypervisor gave the CPU to
# something else while this VM wanted it. No task on the VM shows it, so a stall it
# causes is one that `stalls.sh` finds no task behind.
cpu_steal() {
    awk -v cpu="cpu$1" '$1 == cpu { print $9 }' /proc/stat
}

# Milliseconds of steal between two cpu_steal readings.
steal_ms() {
    echo $(( ($2 - $1) * 1000 / CLK_TCK ))
}

# The share of a CPU's time that was busy between two cpu_busy_total readings, in %.
busy_share() {
    local b0 t0 b1 t1
    read -r b0 t0 <<<"$1"
    read -r b1 t1 <<<"$2"
    python3 -c "print(round(100 * ($b1 - $b0) / max(1, $t1 - $t0), 1))"
}

# One open-loop measurement of row $1 at $RATE req/s, each latency counted from the
# request's due time (bench/openloop: one thread, an epoll wait that ends at the next due
# time, no millisecond timer ticks). Also records how busy each CPU was meanwhile (all
# its processes, kernel included): a busy load CPU queues requests in the client and
# the upstream, and that queueing is in every p99 the row reports.
open_loop() {
    local row="$1" repeat="$2" port json p0 p1 l0 l1 ps0 ps1 ls0 ls1
    port="$(port_of "$row")"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$port/bench" >/dev/null
    json="$RUN/openloop-$row-$repeat.json"
    p0="$(cpu_busy_total "$PROXY_CPU")"
    l0="$(cpu_busy_total "$LOAD_CPU")"
    ps0="$(cpu_steal "$PROXY_CPU")"
    ls0="$(cpu_steal "$LOAD_CPU")"
    taskset -c "$LOAD_CPU" "$OPENLOOP" "127.0.0.1:$port" /bench "$RATE" "$CONNECTIONS" "$OPEN_DURATION" >"$json"
    p1="$(cpu_busy_total "$PROXY_CPU")"
    l1="$(cpu_busy_total "$LOAD_CPU")"
    ps1="$(cpu_steal "$PROXY_CPU")"
    ls1="$(cpu_steal "$LOAD_CPU")"
    printf 'busy\t%s\t%s\t%s\t%s\t%s\t%s\t\t0\n' "$row" "$repeat" \
        "$(busy_share "$p0" "$p1")" "$(busy_share "$l0" "$l1")" \
        "$(steal_ms "$ps0" "$ps1")" "$(steal_ms "$ls0" "$ls1")" >>"$RESULTS"
    python3 - "$json" "$row" "$repeat" >>"$RESULTS" <<'EOF'
import json, sys
path, row, repeat = sys.argv[1:]
d = json.load(open(path))
# Requests never sent (every connection busy to the end) are not errors: the row is
# overloaded at this rate, which its req/s here shows.
errors = d["errors"]
print(f"open\t{row}\t{repeat}\t{d['rps']:.1f}\t{d['p50_us']:.1f}\t{d['p99_us']:.1f}\t\t\t{errors}")
EOF
    say "  $row #$repeat open loop: $(tail -1 "$RESULTS" | cut -f4-6,9 | tr '\t' ' ') (rps p50us p99us errors); CPU busy: $(grep "^busy	$row	$repeat	" "$RESULTS" | cut -f4,5 | tr '\t' ' ') % (proxy load); steal: $(grep "^busy	$row	$repeat	" "$RESULTS" | cut -f6,7 | tr '\t' ' ') ms"
}

# === run ===

[ "$PAUSE_DAMON" = 0 ] || pause_damon

say "starting the upstream on CPU $LOAD_CPU"
check_port_free "$UPSTREAM_PORT"
UPSTREAM_ARGS=("127.0.0.1:$UPSTREAM_PORT")
case " $ROWS " in
    *" weir-fanout "*) UPSTREAM_ARGS+=("$FANOUT_PORT-$((FANOUT_PORT + FANOUT_TARGETS - 1))") ;;
esac
taskset -c "$LOAD_CPU" "$UPSTREAM" "${UPSTREAM_ARGS[@]}" >"$RUN/upstream.log" 2>&1 &
UPSTREAM_PID=$!
STARTED+=("$UPSTREAM_PID")
wait_ready "$UPSTREAM_PORT" "$UPSTREAM_PID" upstream
case " $ROWS " in
    *" weir-full-redis "*)
        say "starting redis-server on CPU $LOAD_CPU, port $REDIS_PORT"
        taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
            --appendonly no --dir "$RUN" >"$RUN/redis.log" 2>&1 &
        STARTED+=("$!")
        for _ in $(seq 1 100); do
            [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] && break
            sleep 0.1
        done
        [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] || die "redis-server did not start; see $RUN/redis.log"
        ;;
esac

# Repeats are interleaved (row 1..N, then again), so a slow drift on the machine
# spreads over every row instead of landing on one.
say "closed loop: $CONNECTIONS connections, ${WARMUP}s warm-up, ${DURATION}s x $REPEATS per row"
for repeat in $(seq 1 "$REPEATS"); do
    for row in $ROWS; do
        # Measured on its own below: one request there is 500 upstream calls.
        [ "$row" = weir-fanout ] && continue
        start_peer "$row"
        closed_loop "$row" "$repeat"
        stop_peer
    done
done

median_rps() {
    awk -F'\t' -v row="$1" '$1 == "closed" && $2 == row { print $4 }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
BASE="nginx"
case " $ROWS " in *" nginx "*) ;; *) BASE="$(echo "${ROWS/weir-fanout/}" | awk '{ print $1 }')" ;; esac
RATE="$(median_rps "$BASE" | awk -v share="$OPEN_SHARE" '{ printf "%d", $1 * share / 100 }')"
# Only the judged rows this run has get the extra repeats.
TAIL_ROWS="$(for row in $TAIL_ROWS; do [[ " $ROWS " == *" $row "* ]] && echo "$row"; done | paste -sd' ' || true)"
[ -n "$TAIL_ROWS" ] || TAIL_EXTRA=0
[ "$TAIL_EXTRA" -gt 0 ] || TAIL_ROWS=""
say "open loop: $RATE req/s ($OPEN_SHARE % of $BASE's median maximum), ${OPEN_DURATION}s x $REPEATS per row${TAIL_ROWS:+, $((REPEATS + TAIL_EXTRA)) for $TAIL_ROWS}"
for repeat in $(seq 1 "$((REPEATS + TAIL_EXTRA))"); do
    for row in $ROWS; do
        [ "$row" = weir-fanout ] && continue
        # The last repeats are for the rows whose p99 a target judges.
        [ "$repeat" -gt "$REPEATS" ] && [[ " $TAIL_ROWS " != *" $row "* ]] && continue
        start_peer "$row"
        open_loop "$row" "$repeat"
        stop_peer
    done
done

# === fan-out to $FANOUT_TARGETS targets (issue #14) ===

# weir with one `fanout` route in mode `all` over $FANOUT_TARGETS upstreams (the bench
# upstream's extra ports): each request is sent to every target, and its answer comes
# when the last target's has, so its latency is the time to the last target. wrk's
# closed loop with $FANOUT_CONNECTIONS connections gives req/s and that latency; the
# targets' failures (which still answer 200) come from weir_fanout_targets_total.
fanout_config() {
    printf '# Written by bench/run.sh: row weir-fanout.\n[listen]\naddr = "127.0.0.1:%s"\n\n' "$(port_of weir-fanout)"
    printf '[admin]\naddr = "127.0.0.1:18089"\nrecent_requests = 0\n\n'
    local targets=() i
    for i in $(seq 0 $((FANOUT_TARGETS - 1))); do
        printf '[upstreams.t%d]\nurl = "http://127.0.0.1:%d"\nmax_connections = 64\n\n' "$i" "$((FANOUT_PORT + i))"
        targets+=("\"t$i\"")
    done
    local IFS=,
    printf '[[routes]]\nname = "bench"\ntimeout = "30s"\nfanout = { targets = [%s], mode = "all" }\n' "${targets[*]}"
}

fanout_failures() {
    curl -s "http://127.0.0.1:18089/metrics" |
        awk '/^weir_fanout_targets_total/ && !/outcome="ok"/ { n += $NF } END { printf "%d\n", n }'
}

case " $ROWS " in
    *" weir-fanout "*)
        fanout_config >"$RUN/weir-fanout.toml"
        say "fan-out: mode all to $FANOUT_TARGETS targets, $FANOUT_CONNECTIONS connections, ${DURATION}s x $REPEATS"
        for repeat in $(seq 1 "$REPEATS"); do
            check_port_free "$(port_of weir-fanout)"
            RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" \
                "$WEIR" run "$RUN/weir-fanout.toml" >"$RUN/weir-fanout.log" 2>&1 &
            PEER_PID=$!
            STARTED+=("$PEER_PID")
            wait_ready "$(port_of weir-fanout)" "$PEER_PID" weir-fanout
            url="http://127.0.0.1:$(port_of weir-fanout)/bench"
            taskset -c "$LOAD_CPU" wrk -t1 -c"$FANOUT_CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
            f0="$(fanout_failures)"
            t0="$(cpu_ticks "$PEER_PID")"
            out="$(taskset -c "$LOAD_CPU" wrk -t1 -c"$FANOUT_CONNECTIONS" -d"${DURATION}s" --latency "$url")"
            t1="$(cpu_ticks "$PEER_PID")"
            f1="$(fanout_failures)"
            echo "$out" >"$RUN/wrk-weir-fanout-$repeat.txt"
            rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
            requests="$(awk '/requests in/ { print $1 }' <<<"$out")"
            p50="$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
            p99="$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
            errors="$(wrk_errors "$out")"
            errors=$((errors + f1 - f0))
            # CPU-µs per target call: the request's cost spread over its targets.
            cpu="$(python3 -c "print(round(($t1 - $t0) * 1e6 / $CLK_TCK / $requests / $FANOUT_TARGETS, 2))")"
            rss="$(peak_rss_kib "$PEER_PID")"
            printf 'fanout\tweir-fanout\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
                "$repeat" "$rps" "$p50" "$p99" "$cpu" "$rss" "$errors" >>"$RESULTS"
            say "  weir-fanout #$repeat: $rps req/s x $FANOUT_TARGETS targets; time to the last target p50 ${p50}us, p99 ${p99}us; $cpu CPU-us per target call; peak RSS $((rss / 1024)) MiB; errors $errors"
            stop_peer
        done
        ;;
esac

# === start-up time, target (f) ===

# `weir run` with the five-filter chain, from exec to the first 200 through it: once with
# an empty compile cache of its own (the cold start, reported but not the target), then
# $STARTS times with that cache warm; the median of those is the figure.
say "start-up: weir run configs/weir-full.toml, 1 cold + $STARTS warm starts"
STARTUP_CACHE="$RUN/compile-cache"
rm -rf "$STARTUP_CACHE"
for start in $(seq 0 "$STARTS"); do
    kind=warm
    [ "$start" = 0 ] && kind=cold
    check_port_free "$(port_of weir-full)"
    ms="$(XDG_CACHE_HOME="$STARTUP_CACHE" RUST_LOG=warn TOKIO_WORKER_THREADS=1 \
        python3 - "$WEIR" "$BENCH/configs/weir-full.toml" "$(port_of weir-full)" "$PROXY_CPU" \
        "$RUN/startup-$start.log" <<'EOF'
import http.client, subprocess, sys, time
weir, config, port, cpu, log = sys.argv[1:]
started = time.monotonic()
proc = subprocess.Popen(["taskset", "-c", cpu, weir, "run", config],
                        stdout=open(log, "w"), stderr=subprocess.STDOUT)
try:
    while True:
        if proc.poll() is not None:
            sys.exit(f"weir exited at start; see {log}")
        if time.monotonic() - started > 120:
            sys.exit(f"weir did not answer within 120 s; see {log}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1)
            c.request("GET", "/bench")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.002)
    print(f"{(time.monotonic() - started) * 1000:.1f}")
finally:
    proc.terminate()
    proc.wait()
EOF
)" || die "start-up measurement failed"
    printf 'ready\tweir-full\t%s\t%s\t%s\t\t\t\t0\n' "$start" "$ms" "$kind" >>"$RESULTS"
    say "  start $start ($kind cache): ready in ${ms} ms"
done

# === the quickstart's memory under load, target (e) ===

# examples/quickstart/weir.toml as it is (the headers filter, the admin API and so the
# recent-request ring), with its ports moved to free ones and its upstream pointed at the
# bench upstream; its peak RSS after a closed-loop run of $DURATION s.
say "quickstart: peak RSS under $CONNECTIONS connections for ${DURATION}s"
sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$QUICKSTART_PORT/" \
    -e "s/127\.0\.0\.1:9901/127.0.0.1:$QUICKSTART_ADMIN_PORT/" \
    -e "s/127\.0\.0\.1:9090/127.0.0.1:$UPSTREAM_PORT/" \
    "$ROOT/examples/quickstart/weir.toml" >"$RUN/quickstart.toml"
grep -q "127.0.0.1:$QUICKSTART_PORT" "$RUN/quickstart.toml" ||
    die "examples/quickstart/weir.toml no longer listens on 127.0.0.1:8080; update run.sh"
check_port_free "$QUICKSTART_PORT"
RUST_LOG=warn taskset -c "$PROXY_CPU" "$WEIR" run "$RUN/quickstart.toml" >"$RUN/quickstart.log" 2>&1 &
PEER_PID=$!
STARTED+=("$PEER_PID")
QUICK_URL="http://127.0.0.1:$QUICKSTART_PORT/demo/bench"
for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$QUICK_URL" || true)" = 200 ] && break
    kill -0 "$PEER_PID" 2>/dev/null || die "the quickstart exited at start; see $RUN/quickstart.log"
    sleep 0.1
done
out="$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$QUICK_URL")"
echo "$out" >"$RUN/wrk-quickstart.txt"
rss="$(peak_rss_kib "$PEER_PID")"
rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
errors="$(wrk_errors "$out")"
printf 'quickstart\tquickstart\t1\t%s\t\t\t\t%s\t%s\n' "$rps" "$rss" "$errors" >>"$RESULTS"
say "  quickstart: $rps req/s, peak RSS $((rss / 1024)) MiB, errors $errors"
stop_peer

# === report ===

MACHINE="$(nproc --all) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -sr); DAMON: $(damon_state)"
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi
python3 "$BENCH/report.py" "$RESULTS" \
    --date "$(date -u +%Y-%m-%dT%H:%MZ)" --commit "$COMMIT" --machine "$MACHINE" \
    --rate "$RATE" --rate-base "$BASE" --open-share "$OPEN_SHARE" --connections "$CONNECTIONS" \
    --duration "$DURATION" --open-duration "$OPEN_DURATION" --warmup "$WARMUP" \
    --repeats "$REPEATS" --tail-repeats "$((REPEATS + TAIL_EXTRA))" --tail-rows "$TAIL_ROWS" --quick "$QUICK" \
    --fanout-targets "$FANOUT_TARGETS" --fanout-connections "$FANOUT_CONNECTIONS" \
    --versions "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'); HAProxy $("$HAPROXY" -v | awk 'NR == 1 { print $3 }'); wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')" \
    >"$RUN/RESULTS.md"
cat "$RUN/RESULTS.md"
if [ -n "$OUT" ]; then
    cp "$RUN/RESULTS.md" "$OUT"
    say "written to $OUT (raw numbers in $RESULTS)"
else
    say "smoke run: table in $RUN/RESULTS.md, bench/RESULTS.md untouched (raw numbers in $RESULTS)"
fi
