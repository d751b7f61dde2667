#!/usr/bin/env python3
"""The functions that cost the most instructions in callgrind output files, per request.

    callgrind_top.py REQUESTS FILE... [--top N] [--jit-map /tmp/perf-PID.map]

Reads files written with `--compress-strings=no --compress-pos=no` (as bench/profile.sh
runs valgrind), sums them (one per thread), and prints two tables: exclusive cost (the
function's own instructions) and inclusive cost (with everything it calls; recursion
counted once per call site, so a recursive function can show more than 100%). Written
for bench/profile.sh: valgrind 3.19's callgrind_annotate puts every instruction of
a thread started by clone() into clone itself.

Guest code that wasmtime compiled has no symbols callgrind can see: it shows as bare
addresses. With `--jit-map`, the perf map weir writes under `WEIR_WASM_PERF_MAP=1`
(bench/profile.sh passes it) names them, e.g. `weir_filter::http::HeaderBlock::parse`
or `wasm[0]::function[344]::dlmalloc`.
"""

import argparse
import bisect
import re
from collections import defaultdict


def short(name, width=110):
    # Drop Rust's hash suffixes and the noisiest generic arguments.
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name if len(name) <= width else name[: width - 1] + "…"


def jit_namer(path):
    """A function from a callgrind name to the perf map's symbol holding its address."""
    if not path:
        return lambda name: name
    entries = []
    with open(path, errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) == 3:
                entries.append((int(parts[0], 16), int(parts[1], 16), parts[2]))
    entries.sort()
    starts = [e[0] for e in entries]

    def name(raw):
        if not raw.startswith("0x"):
            return raw
        try:
            addr = int(raw.split()[0], 16)
        except ValueError:
            return raw
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < entries[i][0] + entries[i][1]:
            return entries[i][2]
        return raw

    return name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("requests", type=int)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--jit-map", help="a perf map naming JIT code (WEIR_WASM_PERF_MAP=1)")
    a = ap.parse_args()
    jit = jit_namer(a.jit_map)

    exclusive = defaultdict(int)
    inclusive = defaultdict(int)
    total = 0
    for path in a.files:
        fn = None
        callee = None
        after_calls = False
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("fn="):
                    fn = jit(line[3:].strip())
                    continue
                if line.startswith("cfn="):
                    callee = jit(line[4:].strip())
                    continue
                if line.startswith("calls="):
                    after_calls = True
                    continue
                if line.startswith("summary:"):
                    total += int(line.split()[1])
                    continue
                if not line or not (line[0].isdigit() or line[0] in "+-*"):
                    continue
                parts = line.split()
                if len(parts) < 2 or fn is None:
                    continue
                cost = int(parts[1])
                if after_calls:
                    after_calls = False
                    if callee != fn:
                        inclusive[fn] += cost
                    continue
                exclusive[fn] += cost
                inclusive[fn] += cost

    n = a.requests
    print(f"total: {total / n:,.0f} instructions per request ({a.requests} requests)")
    for title, table in (("exclusive", exclusive), ("inclusive", inclusive)):
        print()
        print(f"{title:>9} Ir/req    %  function")
        for name, cost in sorted(table.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"{cost / n:>15,.0f} {100 * cost / max(total, 1):5.1f}  {short(name)}")


if __name__ == "__main__":
    main()
