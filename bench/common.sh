# Shared by run.sh and profile.sh, which source it after setting BENCH, ROOT and say()
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
trap stop_started EXIT
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
