#!/usr/bin/env bash
# Installs Debian's redis-server (and redis-cli, for Redis Cluster tests), and nothing when
# they are already there. The tests start their own servers on free loopback ports; this
# never starts or enables a system service.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  scripts/apt-install.sh setup-redis.sh redis-server redis-tools
fi
