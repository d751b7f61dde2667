#!/usr/bin/env bash
# Installs this filter's build tools into ./node_modules: componentize-js and what it
# needs (jco, wizer with its Linux binary, the preview2 shim), from the npm registry,
# exactly as package-lock.json pins them (`npm ci`; no install scripts, no downloads from
# anywhere else). Node.js 20 or newer and npm must already be on PATH.
#
# Idempotent: a quick no-op when node_modules was installed from this same lock file.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup.sh: node and npm are not on PATH; install Node.js 20 or newer with npm" >&2
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "setup.sh: Node.js $(node --version) is too old; componentize-js here is built and" \
        "tested with Node.js 20 or newer" >&2
    exit 1
fi

# npm ci copies nothing it needn't, but it always deletes node_modules first: skip it when
# the lock it last installed from is this one and the compiler is in place.
stamp=node_modules/.weir-setup-lock
if [ -d node_modules/@bytecodealliance/componentize-js ] && cmp -s package-lock.json "$stamp"; then
    exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
cp package-lock.json "$stamp"
