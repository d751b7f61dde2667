#!/usr/bin/env bash
# Builds weir (host and filter components) and runs the quickstart: a local demo
# upstream on 127.0.0.1:9090 and weir on 127.0.0.1:8080, then sends one request through.
# Offline: everything runs on loopback. Set QUICKSTART_ONCE=1 to stop after the demo.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The pinned toolchain and its wasm32-wasip2 target, checked (and added) before the
# long build starts.
scripts/setup-rust.sh
cargo build --bin weir --example demo-upstream

logs=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/debug/examples/demo-upstream 127.0.0.1:9090 >"$logs/upstream.log" 2>&1 &
target/debug/weir run examples/quickstart/weir.toml >"$logs/weir.out" 2>"$logs/weir.log" &

for _ in $(seq 1 200); do
  grep -q "weir listening on" "$logs/weir.out" 2>/dev/null && break
  if ! kill -0 %2 2>/dev/null; then cat "$logs/weir.log"; exit 1; fi
  sleep 0.1
done
grep -q "weir listening on" "$logs/weir.out" || { echo "weir did not start:"; cat "$logs/weir.log"; exit 1; }

echo "== curl -i -H 'cookie: session=abc' http://127.0.0.1:8080/demo/hello?x=1"
curl -sS -i -H 'cookie: session=abc' 'http://127.0.0.1:8080/demo/hello?x=1'
echo
echo "== the upstream saw x-api-key (added by the headers filter) and no cookie;"
echo "== the client saw x-served-by: weir and no server header."
echo "== a path outside every route: curl -i http://127.0.0.1:8080/elsewhere"
curl -sS -i http://127.0.0.1:8080/elsewhere
echo
if [ "${QUICKSTART_ONCE:-}" = "1" ]; then exit 0; fi
echo "weir is serving on 127.0.0.1:8080 (metrics on 127.0.0.1:9901/metrics); logs in $logs. Ctrl-C stops."
wait
