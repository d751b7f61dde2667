#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the toolchains of the JavaScript,
# Python and C example filters (a no-op when they are there), then runs every test.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test e2e example_`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-toolchains.sh
cargo test --workspace "$@"
