#!/usr/bin/env bash
# Installs the toolchains the example filters and the scaffolded projects build with:
# JavaScript (componentize-js, npm), Python (componentize-py, PyPI) and C (Debian's clang-16
# and wasi-libc; wit-bindgen and wasm-tools from crates.io). Each language's own setup.sh
# does the work and is a quick no-op when its tools are already there.
#
# Rust needs nothing here: rust-toolchain.toml brings the toolchain and wasm32-wasip2.
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
