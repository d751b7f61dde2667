#!/usr/bin/env bash
# Installs Debian packages for the setup scripts: `scripts/apt-install.sh WHO PACKAGE...`,
# where WHO names the calling script in messages. Runs apt-get as root, or through sudo.
# A policy-rc.d answering 101 keeps the packages from starting system services: the
# tests start their own servers, on free loopback ports.
set -euo pipefail

who="$1"
shift
if ! command -v apt-get >/dev/null; then
  echo "$who: $* missing and there is no apt-get here; install them by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "$who: $* missing; run this as root, or install sudo" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "$who: installing $* with apt-get" >&2
"${sudo[@]}" apt-get update -qq
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod +x "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
