#!/usr/bin/env bash
# The soak (issue #18): weir's full standard chain (headers, retry, limiter, breaker,
# cache) at half of weir's maximum rate, open-loop, with a config reload every minute.
# It passes when weir's RSS, open file descriptors and tokio tasks end within 10 % of
# where they started (tasks also within 8, as a few come and go) and not one request
# failed. weir runs with glibc's default malloc settings, as in production. The test is
# tests/e2e/soak.rs; this script runs it in release and keeps what it printed.
#
#   bench/soak.sh                  30 minutes, release build
#   bench/soak.sh --quick          3 minutes (CI runs this length, in a debug build)
#   bench/soak.sh --seconds 600    any length (or WEIR_SOAK_SECONDS=600)
#   bench/soak.sh --debug          the debug build the test suite uses (no release build)
#
# The table and the verdict go to stdout and to bench/.run/soak-<UTC time>.txt.
# Everything runs on 127.0.0.1; weir, the upstream and the load share the machine.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"
RUN="$BENCH/.run"
LENGTH="${WEIR_SOAK_SECONDS:-1800}"
PROFILE=(--release)

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) LENGTH=180 ;;
        --seconds) LENGTH="$2"; shift ;;
        --debug) PROFILE=() ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

mkdir -p "$RUN"
OUT="$RUN/soak-$(date -u +%Y%m%dT%H%M%SZ).txt"
cd "$ROOT"
# Build first, so that a long build (release compiles wasmtime) is not part of the run.
cargo test "${PROFILE[@]}" -p weir --test e2e --no-run
{
    echo "# bench/soak.sh: ${LENGTH}s, ${PROFILE[*]:-debug} build, commit $(git describe --always --dirty), $(nproc) cores, $(date -u +%FT%TZ)"
    WEIR_SOAK_SECONDS="$LENGTH" cargo test "${PROFILE[@]}" -p weir --test e2e soak -- --ignored --nocapture 2>&1
} | tee "$OUT"
echo "[soak] written to $OUT" >&2
