#!/usr/bin/env bash
# Installs Debian's prometheus package for its `promtool`, which the tests use to check
# deploy/prometheus/weir-rules.yml and run its unit tests; nothing when promtool is
# already there. This never starts or enables a system service.
set -euo pipefail

if command -v promtool >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "setup-prometheus.sh: promtool is missing and there is no apt-get here; install it by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "setup-prometheus.sh: promtool is missing; run this as root, or install sudo" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "setup-prometheus.sh: installing prometheus (for promtool) with apt-get" >&2
"${sudo[@]}" apt-get update -qq
# policy-rc.d answering 101 keeps the package from starting its system service.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod +x "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus
