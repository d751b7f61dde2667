#!/usr/bin/env python3
"""The functions that cost the most instructions in callgrind output files, per request.

    callgrind_top.py REQUESTS FILE... [--top N]

Reads files written with `--compress-strings=no --compress-pos=no` (as bench/profile.sh
runs valgrind), sums them (one per thread), and prints two tables: exclusive cost (the
function's own instructions) and inclusive cost (with everything it calls; recursion
counted once per call site, so a recursive function can show more than 100%). Written
for bench/profile.sh: valgrind 3.19's callgrind_annotate puts every instruction of
a thread started by clone() into clone itself.
"""

import argparse
import re
from collections import defaultdict


def short(name, width=110):
    # Drop Rust's hash suffixes and the noisiest generic arguments.
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name if len(name) <= width else name[: width - 1] + "…"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("requests", type=int)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()

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
                    fn = line[3:].strip()
                    continue
                if line.startswith("cfn="):
                    callee = line[4:].strip()
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
