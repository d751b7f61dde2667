#!/usr/bin/env bash
# Builds the redactor filter into a WebAssembly component.
#
#   ./build.sh [OUT.wasm]     (default: redactor.wasm in this directory)
#
# componentize-py generates the Python bindings for weir's WIT world on the fly (world
# `http-filter` of `weir:filter@0.2.1`, in wit/v0.2 with the 0.1 interfaces it imports
# in wit/v0.2/deps), so no generated code is kept here. Install it first with ./setup.sh.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/redactor.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

if ! command -v componentize-py >/dev/null 2>&1; then
    echo "componentize-py is not installed: run $here/setup.sh" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"

# Build from a copy of the sources: CPython writes .pyc files next to them while
# componentize-py pre-initialises the component, and they do not belong in the tree.
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
cp "$here/app.py" "$here/redact.py" "$src/"
componentize-py --quiet -d "$here/../../../wit/v0.2" -w http-filter componentize -p "$src" app -o "$out"
