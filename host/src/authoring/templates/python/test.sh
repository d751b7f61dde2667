#!/usr/bin/env bash
# Builds {{name}}.wasm and runs the cases in cases.toml against it with
# `weir filter test`. weir comes from $WEIR, else from PATH.
set -euo pipefail
cd "$(dirname "$0")"

weir=${WEIR:-weir}
if ! command -v "$weir" >/dev/null; then
  echo "test.sh: cannot find weir ($weir): put it on PATH or set WEIR=/path/to/weir" >&2
  exit 1
fi

./build.sh
"$weir" filter test {{name}}.wasm --config config.json --case cases.toml
