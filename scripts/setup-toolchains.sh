#!/usr/bin/env bash
# Installs the toolchains the example filters and the scaffolded projects build with:
# JavaScript (componentize-js, npm), Python (componentize-py, PyPI) and C (Debian's clang-16
# and wasi-libc; wit-bindgen and wasm-tools from crates.io). Each language's own setup.sh
# does the work and is a quick no-op when its tools are already there.
#
# Rust needs nothing here: rust-toolchain.toml brings the toolchain and wasm32-wasip2.
set -euo pipefail
cd "$(dirname "$0")/.."

for lang in c js python; do
    echo "[setup] $lang: examples/filters/$lang/setup.sh" >&2
    "examples/filters/$lang/setup.sh"
done
