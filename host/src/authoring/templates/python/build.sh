#!/usr/bin/env bash
# Builds {{name}}.wasm, the component weir loads, from app.py with componentize-py.
# componentize-py generates the Python bindings for weir's WIT world on the fly (world
# `http-filter` of `weir:filter@0.2.1`: wit/v0.2, with the 0.1 interfaces it imports in
# wit/v0.2/deps), so no generated code is kept here. ./setup.sh installs it.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v componentize-py >/dev/null 2>&1; then
  echo "build.sh: componentize-py is not installed: run ./setup.sh" >&2
  exit 1
fi

# CPython in the component writes .pyc files here while it pre-initialises: build litter
# (see .gitignore).
componentize-py --quiet -d wit/v0.2 -w http-filter componentize -p . app -o {{name}}.wasm
echo "build.sh: wrote {{name}}.wasm"
