# Shared by run.sh, profile.sh, cpusplit.sh, stalls.sh and slow-clients.sh, which source it after setting BENCH, ROOT and say()
# (profile.sh also TOOLS). Stops the processes they start when they exit, installs what is missing and
# builds the binaries under test.

# The pids of the processes the script starts: all are stopped when it exits.
STARTED=()
stop_started() {
    for pid in "${STARTED[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
# With --pause-damon (run.sh, stalls.sh), the kernel's DAMON monitors that were started
# through its sysfs interface and are on are turned off for the run, and back on when the
# script exits, however it exits. On some VMs (this project's among them) `kdamond`
# samples the physical memory every 500 ms and holds a CPU for 1-7 ms each time, which
# lands in every open-loop tail (bench/README.md, "The fourteenth round" and "The
# seventeenth round"). Needs root; DAMON's settings are kept.
DAMON_ADMIN=/sys/kernel/mm/damon/admin/kdamonds
DAMON_PAUSED=()
pause_damon() {
    local state
    for state in "$DAMON_ADMIN"/*/state; do
        [ -e "$state" ] || continue
        if [ ! -r "$state" ] || [ ! -w "$state" ]; then
            say "cannot read or write $state: --pause-damon needs root"
            exit 1
        fi
        [ "$(cat "$state")" = on ] || continue
        # Noted first, so that the exit turns it back on whatever happens next.
        DAMON_PAUSED+=("$state")
        if ! { echo off >"$state"; } 2>/dev/null; then
            say "could not turn DAMON off: $state"
            exit 1
        fi
        say "DAMON paused for this run: $state (turned back on when the script exits)"
    done
}
# What DAMON did during the run, for the results. The kdamond threads are counted by
# name, which needs no root and also finds monitors started by a kernel module
# (DAMON_RECLAIM and the like), which --pause-damon leaves alone.
damon_state() {
    local running
    running="$(pgrep -c '^kdamond' || true)"
    if [ ${#DAMON_PAUSED[@]} -gt 0 ]; then
        if [ "${running:-0}" -gt 0 ]; then
            echo "paused for the run (--pause-damon), but $running kdamond thread(s) not started through sysfs ran"
        else
            echo "paused for the run (--pause-damon)"
        fi
    elif [ "${running:-0}" -gt 0 ]; then
        echo "on ($running kdamond thread(s); --pause-damon turns those started through sysfs off for a run)"
    else
        echo "not running"
    fi
}
resume_damon() {
    local state
    for state in "${DAMON_PAUSED[@]:-}"; do
        [ -n "$state" ] || continue
        { echo on >"$state"; } 2>/dev/null || say "could not turn DAMON back on: run 'echo on > $state' as root"
    done
    DAMON_PAUSED=()
}
# DAMON first: stop_started waits for processes, and a second Ctrl-C during that wait
# ends the script without running this trap again.
trap 'resume_damon; stop_started' EXIT
trap 'exit 130' INT TERM

# Installs the Debian packages named, if any (scripts/apt-install.sh: root or sudo, and
# no service started, so no system nginx or HAProxy competes with the measured ones).
apt_install() {
    [ $# -gt 0 ] || return 0
    "$ROOT/scripts/apt-install.sh" bench "$@" >/dev/null
}

# Sets NGINX and HAPROXY.
find_peers() {
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
    HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
}

# Sets OHA (profile.sh's client); installs oha into $TOOLS with cargo when none is on PATH.
find_oha() {
    OHA="$(command -v oha || true)"
    if [ -z "$OHA" ]; then
        OHA="$TOOLS/bin/oha"
        if [ ! -x "$OHA" ]; then
            say "installing oha into $TOOLS (cargo install --locked)"
            cargo install oha --locked --root "$TOOLS" >/dev/null
        fi
    fi
}

# Builds weir (unless WEIR_BIN names a build to use), the upstream, the open-loop client,
# the pingora peer and the bare hyper proxy in release; sets WEIR, UPSTREAM, OPENLOOP,
# PINGORA and HYPER. All but weir are bench/'s own workspace with its own target dir, so
# their dependencies never change a feature of weir's build.
build_binaries() {
    if [ -n "${WEIR_BIN:-}" ]; then
        # Another build of weir (an older commit's, for a before-and-after): used as is.
        [ -x "$WEIR_BIN" ] || { echo "WEIR_BIN=$WEIR_BIN is not an executable" >&2; exit 2; }
        say "using weir from WEIR_BIN: $WEIR_BIN"
        WEIR="$WEIR_BIN"
    else
        say "building weir (release)"
        (cd "$ROOT" && cargo build --release -q -p weir --bin weir)
        local target
        target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
        WEIR="$target/release/weir"
    fi
    say "building the upstream, the open-loop client, the pingora peer and the bare hyper proxy (release, bench/target)"
    (cd "$BENCH" && CARGO_TARGET_DIR="$BENCH/target" cargo build --release -q)
    UPSTREAM="$BENCH/target/release/weir-bench-upstream"
    OPENLOOP="$BENCH/target/release/weir-bench-openloop"
    PINGORA="$BENCH/target/release/weir-bench-pingora"
    HYPER="$BENCH/target/release/weir-bench-hyper"
}

# weir-noop's config names the test component `misbehave` by its path under the default
# target dir, where building weir puts it (host/build.rs). Stops with a clear message when
# the rows include weir-noop and the file is not there (another CARGO_TARGET_DIR, or a
# WEIR_BIN build on a tree never built).
check_noop_component() {
    case " $* " in *" weir-noop "*) ;; *) return 0 ;; esac
    local wasm="$ROOT/target/wasm-filters/wasm32-wasip2/release/weir_test_misbehave.wasm"
    [ -f "$wasm" ] || {
        echo "weir-noop needs $wasm: build weir in $ROOT with the default target dir (cargo build --release -p weir), or leave the row out" >&2
        exit 2
    }
}

# The pid and all its descendants (nginx's worker is the master's child).
proc_tree() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" || true); do
        proc_tree "$c"
    done
}

# "USER SYSTEM": utime and stime, in clock ticks, of the process tree (all threads).
cpu_ticks_split() {
    local user=0 system=0 pid stat
    for pid in $(proc_tree "$1"); do
        # Fields 14 and 15 after the ")" that ends the command name.
        stat="$(cat /proc/"$pid"/stat 2>/dev/null)" || continue
        stat="${stat##*) }"
        # shellcheck disable=SC2086
        set -- $stat
        user=$((user + ${12}))
        system=$((system + ${13}))
    done
    echo "$user $system"
}

# Failed answers (not 2xx or 3xx) and socket errors in wrk's output, $1.
wrk_errors() {
    awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$1"
}

# cpusplit.sh's and stalls.sh's rows: nginx, hyper (the bare hyper proxy) and the weir
# rows of run.sh that answer 200 on 18084 from configs/ROW.toml over plain HTTP. Exits
# with a message for any other $1.
check_cpu0_row() {
    case "$1" in
        nginx|hyper) ;;
        weir-otlp|weir-full-redis|weir-async|weir-fanout|*-tls)
            say "$1 needs what only run.sh or ab.sh sets up (an OTLP receiver, redis, a fresh journal that answers 202, 500 upstreams, or a certificate)"
            exit 2 ;;
        weir-*) [ -f "$BENCH/configs/$1.toml" ] || { say "no config for $1: $BENCH/configs/$1.toml"; exit 2; } ;;
        *) say "unknown row $1 (nginx, hyper or weir-*)"; exit 2 ;;
    esac
}

# Starts row $1 (see check_cpu0_row) pinned to CPU 0, as run.sh does, logging to
# $RUN/ROW.log, and waits until it answers 200 on /bench. Sets ROW_PID, ROW_PORT and
# ROW_URL.
start_cpu0_row() {
    local row="$1" port
    case "$row" in
        nginx)
            port=18081
            taskset -c 0 "$NGINX" -p "$RUN/nginx/" -e stderr -c "$BENCH/peers/nginx.conf" \
                >"$RUN/$row.log" 2>&1 &
            ;;
        hyper)
            port=18093
            taskset -c 0 "$HYPER" "127.0.0.1:$port" 127.0.0.1:18080 >"$RUN/$row.log" 2>&1 &
            ;;
        weir-*)
            port=18084
            RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 \
                "$WEIR" run "$BENCH/configs/$row.toml" >"$RUN/$row.log" 2>&1 &
            ;;
    esac
    ROW_PID=$!
    STARTED+=("$ROW_PID")
    ROW_PORT=$port
    ROW_URL="http://127.0.0.1:$port/bench"
    for _ in $(seq 1 100); do
        kill -0 "$ROW_PID" 2>/dev/null || { say "$row exited at start (its log: $RUN/$row.log)"; exit 1; }
        [ "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "$ROW_URL" || true)" = 200 ] && return 0
        sleep 0.1
    done
    say "$row did not answer 200 on $port within 10 s (its log: $RUN/$row.log)"
    exit 1
}

# Refuses to go on when something already answers on a port cpusplit.sh and stalls.sh use.
check_cpu0_ports() {
    local port
    for port in 18080 18081 18084 18093; do
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
            say "something already answers on 127.0.0.1:$port; stop it first"
            exit 1
        fi
    done
}

# Empties the run directory $1 and sets RUN to it, then starts the bench upstream on
# CPU 1, port 18080, and waits for it to answer.
start_cpu1_upstream() {
    RUN="$1"
    rm -rf "$RUN"
    mkdir -p "$RUN/nginx/tmp"
    taskset -c 1 "$UPSTREAM" 127.0.0.1:18080 >"$RUN/upstream.log" 2>&1 &
    STARTED+=("$!")
    for _ in $(seq 1 50); do
        curl -s -o /dev/null --max-time 1 http://127.0.0.1:18080/ && return 0
        sleep 0.1
    done
}
