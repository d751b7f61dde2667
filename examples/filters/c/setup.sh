#!/usr/bin/env bash
# Installs what `make` in this directory needs, and nothing when it is already there:
#   - Debian's clang-16, lld-16, wasi-libc and the wasm32 compiler runtime (apt);
#   - wit-bindgen (C bindings) and wasm-tools (component new), pinned (cargo).
# The pins match the component-model crates weir itself builds with (wit-bindgen 0.61,
# wit-component 0.258), so the components they make are ones weir's wasmtime loads.
# Re-running it is cheap: each step checks first.
set -euo pipefail

WIT_BINDGEN_VERSION=0.61.1
WASM_TOOLS_VERSION=1.258.3
APT_PACKAGES=(clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32)

# apt: install only the packages that are missing; sudo only when not already root.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "setup.sh: missing ${missing[*]} and no apt-get here; install them by hand" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "setup.sh: missing ${missing[*]}; run this as root, or install sudo" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  echo "setup.sh: installing ${missing[*]} with apt-get"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# cargo: install each tool unless that exact version is already there. Only the features
# the build uses are compiled (wit-bindgen's C generator; wasm-tools' component, print,
# objdump and validate commands): a third less compile time than the defaults.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
has_version() { # binary version
  command -v "$1" >/dev/null && "$1" --version 2>/dev/null | grep -qF " $2"
}
install_tool() { # crate version binary features make-variable
  local crate=$1 version=$2 binary=$3 features=$4 variable=$5
  if ! has_version "$binary" "$version" && ! has_version "$cargo_bin/$binary" "$version"; then
    echo "setup.sh: cargo install --locked $crate@$version (takes a few minutes)"
    cargo install --locked --quiet "$crate@$version" --no-default-features --features "$features"
  fi
  if ! has_version "$binary" "$version"; then
    echo "setup.sh: note: \`$binary\` on PATH is missing or not $version; add $cargo_bin to PATH," \
      "or run make with $variable=$cargo_bin/$binary" >&2
  fi
}
install_tool wit-bindgen-cli "$WIT_BINDGEN_VERSION" wit-bindgen c WIT_BINDGEN
install_tool wasm-tools "$WASM_TOOLS_VERSION" wasm-tools component,print,objdump,validate WASM_TOOLS

echo "setup.sh: ready: clang-16, wasm-ld-16, wasi-libc, wit-bindgen $WIT_BINDGEN_VERSION, wasm-tools $WASM_TOOLS_VERSION"
