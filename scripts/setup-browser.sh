#!/usr/bin/env bash
# Installs what the dashboard's browser tests need: Debian's chromium, and
# playwright-core (the driver alone: it downloads no browser of its own) at the version
# tests/browser/package-lock.json pins. Quick when both are there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  scripts/apt-install.sh setup-browser.sh chromium
fi

if ! command -v npm >/dev/null; then
  echo "setup-browser.sh: npm is missing (scripts/setup-toolchains.sh installs it)" >&2
  exit 1
fi
want=$(node -p 'require("./tests/browser/package-lock.json").packages["node_modules/playwright-core"].version')
have=$(node -p 'try { require("./tests/browser/node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$want" != "$have" ]; then
  echo "setup-browser.sh: installing playwright-core $want" >&2
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
