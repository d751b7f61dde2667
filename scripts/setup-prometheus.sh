#!/usr/bin/env bash
# Installs Debian's prometheus package for its `promtool`, which the tests use to check
# deploy/prometheus/weir-rules.yml and run its unit tests; nothing when promtool is
# already there. This never starts or enables a system service.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  scripts/apt-install.sh setup-prometheus.sh prometheus
fi
