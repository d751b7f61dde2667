#!/usr/bin/env bash
# Installs the build tool for this filter: componentize-py, pinned, from PyPI with pip.
# Idempotent: a quick no-op when that version is already the one on PATH.
set -euo pipefail

version=0.25.1
python="${PYTHON:-python3}"

if [ "$(componentize-py --version 2>/dev/null)" = "componentize-py $version" ]; then
    exit 0
fi
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "componentize-py==$version"
hash -r
if [ "$(componentize-py --version 2>/dev/null)" != "componentize-py $version" ]; then
    echo "installed componentize-py $version with $python, but the componentize-py on PATH" \
        "is '$(command -v componentize-py || echo none)': put pip's script directory first" >&2
    exit 1
fi
