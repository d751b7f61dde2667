#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for FUZZ_SECONDS (default 45) from its
# seed corpus. Fails on the first crash, leak or timeout; libFuzzer keeps the input that
# caused it under fuzz/artifacts/TARGET/ (see fuzz/README.md to reproduce it).
#
#   scripts/fuzz.sh                              # every target, 45 s each
#   FUZZ_SECONDS=3600 scripts/fuzz.sh path       # one target for an hour
#   FUZZ_INSTALL_ONLY=1 scripts/fuzz.sh          # only make sure cargo-fuzz is there
#
# It runs on the stable toolchain rust-toolchain.toml pins: cargo-fuzz's default
# AddressSanitizer needs nightly's -Zsanitizer, so the targets build with
# `--sanitizer none` (weir's library is `#![forbid(unsafe_code)]`: what a fuzzer finds
# there is a panic, an overflow (debug assertions are on), a hang or a failed assertion,
# none of which needs ASan). libFuzzer's coverage instrumentation is stable `-C` flags.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: its flags and output are what this script reads.
CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-45}

die() { echo "fuzz.sh: $*" >&2; exit 1; }

PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export PATH

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" ||
    die "could not install cargo-fuzz $CARGO_FUZZ_VERSION (see above)"
fi
[ -z "${FUZZ_INSTALL_ONLY:-}" ] || exit 0

# Every target, or those named.
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
[ "${#targets[@]}" -gt 0 ] || die "no fuzz targets found in fuzz/"

# One build for all of them (a --dev build: see fuzz/Cargo.toml for why).
flags=(--fuzz-dir fuzz --dev --sanitizer none)
started=$SECONDS
cargo fuzz build "${flags[@]}" || die "building the fuzz targets failed (see above)"
echo "fuzz.sh: built the fuzz targets in $((SECONDS - started)) s" >&2

root=$(pwd)
failed=()
for target in "${targets[@]}"; do
  [ -d "fuzz/corpus/$target" ] || die "fuzz/corpus/$target is missing: every target has a seed corpus"
  # New inputs go to a working corpus under fuzz/target (kept between runs, not
  # committed); the committed seeds are only read.
  work="$root/fuzz/target/corpus/$target"
  mkdir -p "$work" "fuzz/artifacts/$target"
  echo "fuzz.sh: $target for ${FUZZ_SECONDS} s" >&2
  if ! cargo fuzz run "${flags[@]}" "$target" "$work" "$root/fuzz/corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: crashed: ${failed[*]}; the inputs are in fuzz/artifacts/ (fuzz/README.md says how to reproduce them)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${FUZZ_SECONDS} s each without a crash" >&2
