#!/usr/bin/env bash
# Builds {{name}}.wasm, the component weir loads, with cargo's wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")"

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "build.sh: the wasm32-wasip2 target is missing; install it with: rustup target add wasm32-wasip2" >&2
  exit 1
fi

cargo build --release --target wasm32-wasip2

# cargo's target directory may be elsewhere (CARGO_TARGET_DIR, a shared build.target-dir).
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
cp "$target_dir/wasm32-wasip2/release/{{name_snake}}.wasm" {{name}}.wasm
echo "build.sh: wrote {{name}}.wasm"
