#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the toolchains of the JavaScript,
# Python and C example filters, redis-server, chromium and promtool (each a no-op when it
# is there), then runs every test.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test e2e example_`. A whole
# run (no arguments) then runs the soak for 3 minutes (tests/e2e/soak.rs; bench/soak.sh
# runs it for 30) and each fuzz target for FUZZ_SECONDS, default 45 (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# Where `cargo install` and `pip install --user` put commands (wit-bindgen, wasm-tools,
# componentize-py), in case this shell's PATH lacks them.
PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if user_base=$(python3 -m site --user-base 2>/dev/null); then PATH="$PATH:$user_base/bin"; fi
export PATH

scripts/setup-rust.sh
scripts/setup-toolchains.sh
scripts/setup-redis.sh
scripts/setup-browser.sh
scripts/setup-prometheus.sh
cargo test --workspace "$@"
if [ "$#" -eq 0 ]; then
    WEIR_SOAK_SECONDS=180 cargo test -p weir --test e2e soak -- --ignored --nocapture
fi
if [ "$#" -eq 0 ]; then scripts/fuzz.sh; fi
