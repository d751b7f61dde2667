#!/usr/bin/env bash
# Where a proxy's CPU per request goes: user space against the kernel, and how many system
# calls a request makes. Instruction counts (profile.sh) see only user space, and on this
# kind of VM a path's instructions do not all cost the same, so the split says which side
# a difference between two rows is on.
#
#   bench/cpusplit.sh                          nginx, weir-empty, weir-noop, weir-headers
#   bench/cpusplit.sh nginx weir-empty 3       nginx, hyper (the bare hyper proxy: the
#                                              floor under weir), and the weir rows of
#                                              run.sh that answer 200 on 18084 from
#                                              configs/ROW.toml (all but weir-otlp,
#                                              weir-full-redis, weir-async and
#                                              weir-fanout); a number is the repeats
#   WEIR_BIN=/tmp/weir-old bench/cpusplit.sh   another build of weir
#   bench/cpusplit.sh --open 20000 nginx weir-empty
#                                              the measured 10 s are bench/openloop at that
#                                              rate, not wrk: what a request costs when it
#                                              comes alone (a wake-up each way, no batching)
#   POST_BYTES=512 bench/cpusplit.sh nginx weir-empty
#                                              every request a POST with a JSON body of that
#                                              many bytes (wrk only, not with --open)
#
# Each row runs pinned to CPU 0 (weir with RUST_LOG=warn and TOKIO_WORKER_THREADS=1, as in
# run.sh); wrk -t1 -c64 and the bench upstream share CPU 1. After 3 s of warm-up, 10 s are
# measured (wrk, or bench/openloop with --open): utime and stime of the proxy's
# processes from /proc, and, when `perf` can count the `raw_syscalls:sys_enter`
# tracepoint, the system calls. The rows run in turn, once per repeat; prints one line
# per run.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"
say() { echo "[cpusplit] $*" >&2; }

ROWS=()
REPEATS=2
OPEN_RATE=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        --open)
            OPEN_RATE="${2:-}"; [ $# -ge 2 ] && shift
            [[ "$OPEN_RATE" =~ ^[1-9][0-9]*$ ]] || { say "--open takes requests per second (got '$OPEN_RATE')"; exit 2; } ;;
        ''|*[!0-9]*) ROWS+=("$1") ;;
        *) REPEATS="$1" ;;
    esac
    shift
done
[ ${#ROWS[@]} -gt 0 ] || ROWS=(nginx weir-empty weir-noop weir-headers)
[ "$REPEATS" -ge 1 ] || { say "repeats must be at least 1"; exit 2; }
WRK_ARGS=()
if [ -n "${POST_BYTES:-}" ]; then
    [[ "$POST_BYTES" =~ ^[1-9][0-9]+$ ]] || { say "POST_BYTES takes a number of bytes, 10 or more (got '$POST_BYTES')"; exit 2; }
    [ -z "$OPEN_RATE" ] || { say "POST_BYTES works with wrk only, not with --open"; exit 2; }
    export POST_BYTES
    WRK_ARGS=(-s "$BENCH/post.lua")
fi
# shellcheck source=common.sh
. "$BENCH/common.sh"
# Every row checked before anything is built or run.
for row in "${ROWS[@]}"; do
    check_cpu0_row "$row"
done

for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { say "$tool is missing (bench/run.sh installs what it needs)"; exit 1; }
done
check_cpu0_ports

find_peers
build_binaries
check_noop_component "${ROWS[@]}"

# A perf that cannot read tracepoints (no permission, no tracefs) leaves the column out.
PERF=""
if command -v perf >/dev/null &&
    perf stat -e raw_syscalls:sys_enter -o /dev/null -- true >/dev/null 2>&1; then
    PERF=perf
else
    say "perf cannot count system calls here: that column is left out"
fi

start_cpu1_upstream "$BENCH/.run/cpusplit"
TCK=$(getconf CLK_TCK)

for i in $(seq 1 "$REPEATS"); do
    for row in "${ROWS[@]}"; do
        start_cpu0_row "$row"
        pid=$ROW_PID
        port=$ROW_PORT
        url=$ROW_URL
        taskset -c 1 wrk -t1 -c64 -d3s "${WRK_ARGS[@]}" "$url" >/dev/null
        # nginx's master forks its workers: count them all.
        pids="$(proc_tree "$pid" | paste -sd,)"
        read -r u0 s0 <<<"$(cpu_ticks_split "$pid")"
        perf_pid=""
        if [ -n "$PERF" ]; then
            # Counts until stopped, so that it spans all of wrk's 10 s.
            perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -o "$RUN/$row.perf" &
            perf_pid=$!
            sleep 0.2
        fi
        if [ -n "$OPEN_RATE" ]; then
            taskset -c 1 "$OPENLOOP" "127.0.0.1:$port" /bench "$OPEN_RATE" 64 10 >"$RUN/$row.json"
            # bench/openloop's JSON, put in wrk's words for the lines below.
            out="$(python3 - "$RUN/$row.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['completed']} requests in 10s")
print(f"Requests/sec: {d['rps']}")
print(f"Non-2xx or 3xx responses: {d['errors']}")
EOF
)"
        else
            out="$(taskset -c 1 wrk -t1 -c64 -d10s "${WRK_ARGS[@]}" "$url")"
        fi
        read -r u1 s1 <<<"$(cpu_ticks_split "$pid")"
        calls=""
        if [ -n "$perf_pid" ]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            # perf stat ends with 130 when stopped by SIGINT, having written its counts.
            rc=0
            wait "$perf_pid" || rc=$?
            if [ "$rc" = 0 ] || [ "$rc" = 130 ]; then
                calls="$(awk -F, '/raw_syscalls/ {print $1}' "$RUN/$row.perf")"
            else
                say "perf stat failed on $row (see $RUN/$row.perf): no system calls for this run"
            fi
        fi
        reqs="$(echo "$out" | awk '/requests in/ {print $1}')"
        rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
        # Any answer but a 2xx or 3xx, or a socket error, makes the run's numbers suspect.
        bad="$(wrk_errors "$out")"
        python3 - "$row" "$i" "$rps" "$reqs" "$u0" "$u1" "$s0" "$s1" "$TCK" "$calls" "$bad" <<'EOF'
import sys
row, i, rps, reqs, u0, u1, s0, s1, tck, calls, bad = sys.argv[1:]
reqs, tck = int(reqs), int(tck)
user = (int(u1) - int(u0)) * 1e6 / tck / reqs
system = (int(s1) - int(s0)) * 1e6 / tck / reqs
line = (f"{row} #{i}: {float(rps):,.0f} req/s; CPU-us/req {user + system:.2f} = "
        f"user {user:.2f} + system {system:.2f}")
if calls.isdigit():
    # perf also counts the 0.2 s before wrk starts, when the proxy idles in epoll_wait.
    line += f"; system calls/req {int(calls) / reqs:.2f}"
if int(bad):
    line += f"; WARNING: {bad} failed answers or socket errors"
print(line)
EOF
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
done
