#!/usr/bin/env bash
# Installs what the dashboard's browser tests need: Debian's chromium, and
# playwright-core (the driver alone: it downloads no browser of its own) at the version
# tests/browser/package-lock.json pins. Quick when both are there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "setup-browser.sh: chromium is missing and there is no apt-get here; install it by hand" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "setup-browser.sh: chromium is missing; run this as root, or install sudo" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  echo "setup-browser.sh: installing chromium with apt-get" >&2
  "${sudo[@]}" apt-get update -qq
  # policy-rc.d answering 101 keeps the packages it pulls in from starting services.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium
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
