#!/usr/bin/env bash
# Installs the toolchains the example filters and the scaffolded projects build with:
# JavaScript (componentize-js, npm), Python (componentize-py, PyPI) and C (Debian's clang-16
# and wasi-libc; wit-bindgen and wasm-tools from crates.io). Each language's own setup.sh
# does the work and is a quick no-op when its tools are already there.
#
# Rust's toolchain and its wasm32-wasip2 target come from scripts/setup-rust.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where `cargo install` and `pip install --user` put commands (wit-bindgen, wasm-tools,
# componentize-py), in case this shell's PATH lacks them.
PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if user_base=$(python3 -m site --user-base 2>/dev/null); then PATH="$PATH:$user_base/bin"; fi
export PATH

for lang in c js python; do
    echo "[setup] $lang: examples/filters/$lang/setup.sh" >&2
    "examples/filters/$lang/setup.sh"
done
