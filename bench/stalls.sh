#!/usr/bin/env bash
# What makes a proxy's open-loop tail: the moments its CPU was taken by something else.
#
#   bench/stalls.sh                        nginx and weir-empty, twice each, at 20000 req/s
#   bench/stalls.sh nginx hyper weir-empty 3 --rate 19000
#   WEIR_BIN=/tmp/weir-old bench/stalls.sh another build of weir
#   bench/stalls.sh --pause-damon          with the kernel's DAMON monitor off (common.sh)
#
# Rows are those of cpusplit.sh: nginx, hyper (the bare hyper proxy) and the weir rows that
# answer 200 on 18084 from configs/ROW.toml. Each runs pinned to CPU 0 as in run.sh; the
# bench upstream and bench/openloop share CPU 1. After 3 s of warm-up (wrk), one 10 s open
# loop runs at the rate while `perf record -C 0,1` traces every context switch on both
# CPUs. The open loop writes the worst latency of each millisecond (OPENLOOP_TIMELINE), and
# both are stamped with CLOCK_MONOTONIC, so the script can say, for each run:
#   - the open loop's p50, p99 and p99.9;
#   - every other task that held either CPU for 200 µs or more at a time (kernel threads
#     such as kdamond and kworkers, other processes), with how often and how long: on
#     the proxy's CPU it delays the proxy, on the load CPU the upstream and the client;
#   - the latency episodes (milliseconds whose worst request waited 1 ms or more, merged
#     when under 5 ms apart), and how many of them overlap such a run, by task;
#   - the requests that waited 1 ms or more, and the share of them in those episodes.
# Tracing the switches costs the proxy's CPU a little, so the run's p99 is a little above
# run.sh's; the point is where the tail comes from, not its size. Needs perf with access
# to the sched:sched_switch tracepoint (root, or perf_event_paranoid ≤ 1 with tracefs).
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"
say() { echo "[stalls] $*" >&2; }

ROWS=()
REPEATS=2
RATE=20000
SECONDS_OPEN=10
PAUSE_DAMON=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        --pause-damon) PAUSE_DAMON=1 ;;
        --rate)
            RATE="${2:-}"; [ $# -ge 2 ] && shift
            [[ "$RATE" =~ ^[1-9][0-9]*$ ]] || { say "--rate takes requests per second (got '$RATE')"; exit 2; } ;;
        ''|*[!0-9]*) ROWS+=("$1") ;;
        *) REPEATS="$1" ;;
    esac
    shift
done
[ ${#ROWS[@]} -gt 0 ] || ROWS=(nginx weir-empty)
[ "$REPEATS" -ge 1 ] || { say "repeats must be at least 1"; exit 2; }
# shellcheck source=common.sh
. "$BENCH/common.sh"
# Every row checked before anything is built or run.
for row in "${ROWS[@]}"; do
    check_cpu0_row "$row"
done

for tool in wrk curl python3 taskset perf; do
    command -v "$tool" >/dev/null || { say "$tool is missing (bench/run.sh installs wrk; perf is Debian's linux-perf)"; exit 1; }
done
if ! perf record -q -C 0 -e sched:sched_switch -o /dev/null -- true >/dev/null 2>&1; then
    say "perf cannot trace sched:sched_switch here (needs root, or perf_event_paranoid <= 1 and a readable tracefs)"
    exit 1
fi
check_cpu0_ports

find_peers
build_binaries
check_noop_component "${ROWS[@]}"

start_cpu1_upstream "$BENCH/.run/stalls"
[ "$PAUSE_DAMON" = 0 ] || pause_damon
say "DAMON: $(damon_state)"

for i in $(seq 1 "$REPEATS"); do
    for row in "${ROWS[@]}"; do
        start_cpu0_row "$row"
        pid=$ROW_PID
        port=$ROW_PORT
        url=$ROW_URL
        taskset -c 1 wrk -t1 -c64 -d3s "$url" >/dev/null
        # Every thread of the proxy (nginx's worker is the master's child): their runs on
        # CPU 0 are the proxy's own, not a stall.
        tids="$(for p in $(proc_tree "$pid"); do ls "/proc/$p/task" 2>/dev/null || true; done | paste -sd,)"
        base="$RUN/$row-$i"
        perf record -q -k monotonic -C 0,1 -e sched:sched_switch -o "$base.perf" 2>"$base.perf.log" &
        perf_pid=$!
        # Stopped with the rest if the script ends early, or common.sh's exit waits on it.
        STARTED+=("$perf_pid")
        sleep 0.3
        OPENLOOP_TIMELINE="$base.timeline" taskset -c 1 "$OPENLOOP" "127.0.0.1:$port" /bench \
            "$RATE" 64 "$SECONDS_OPEN" >"$base.json"
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf script -i "$base.perf" -F cpu,time,trace 2>/dev/null >"$base.switches" ||
            { say "perf script failed on $base.perf"; exit 1; }
        python3 "$BENCH/stalls.py" "$row #$i" "$base.json" "$base.timeline" "$base.switches" 0 "$tids"
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
done
