#!/usr/bin/env bash
# Makes sure the Rust toolchain that rust-toolchain.toml pins is installed, with every
# target it names (wasm32-wasip2 for the filter components). rustup installs a missing
# toolchain with its targets on first use, but it does not add targets to a toolchain
# that is already installed: this script does, and checks the result, so a missing piece
# fails here in seconds instead of after a 12-minute build.
# Cheap when everything is there: it only asks rustup and rustc.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup-rust.sh: $*" >&2; exit 1; }

command -v rustup >/dev/null ||
  die "rustup is not on PATH. Install it (https://rustup.rs), then run this again; weir builds with the toolchain rust-toolchain.toml pins."

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
targets=$(sed -n 's/^targets *= *\[\(.*\)\]/\1/p' rust-toolchain.toml | tr -d '" ' | tr ',' ' ')
[ -n "$toolchain" ] || die "rust-toolchain.toml names no channel"

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "setup-rust.sh: installing Rust $toolchain" >&2
  rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy ||
    die "could not install Rust $toolchain with rustup (see above)"
fi

for target in $targets; do
  libdir=$(rustup run "$toolchain" rustc --print target-libdir --target "$target")
  if ! ls "$libdir"/libcore-*.rlib >/dev/null 2>&1; then
    echo "setup-rust.sh: adding the $target target to Rust $toolchain" >&2
    rustup target add --toolchain "$toolchain" "$target" ||
      die "could not add the $target target: run 'rustup target add --toolchain $toolchain $target' and try again"
    ls "$libdir"/libcore-*.rlib >/dev/null 2>&1 ||
      die "rustup says $target is installed, but $libdir has no standard library"
  fi
done
