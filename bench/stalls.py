"""bench/stalls.sh's analysis of one run: which other tasks held the proxy's CPU, and how
much of the open loop's tail fell while they did.

    stalls.py LABEL OPENLOOP_JSON TIMELINE SWITCHES PROXY_CPU PROXY_TIDS

TIMELINE is bench/openloop's OPENLOOP_TIMELINE file; SWITCHES is `perf script -F
cpu,time,trace` of `perf record -k monotonic -C PROXY_CPU,LOAD_CPU -e
sched:sched_switch`; PROXY_TIDS the proxy's thread ids, comma-separated. On the proxy's
CPU the proxy's threads are its own work; on the load CPU, the bench upstream's and
bench/openloop's (their names start with `weir-bench-`). Prints a few lines about the
run.
"""

import collections
import json
import re
import sys

HELD_US = 200        # another task's run on the CPU at least this long is listed
SLOW_US = 1000       # a millisecond whose worst request waited this long is in an episode
MERGE_MS = 5         # episodes closer than this are one

SWITCH = re.compile(r"^\s*\[(\d+)\]\s+(\d+\.\d+):.*?prev_comm=(.+?) prev_pid=(\d+) ")


def runs_of_others(path, proxy_cpu, proxy):
    """(start s, end s, "comm on CPU n") of every run, HELD_US or longer, of a task that
    is not idle and not the benchmark's own on that CPU."""
    runs = []
    last = {}
    with open(path) as f:
        for line in f:
            m = SWITCH.match(line)
            if not m:
                continue
            cpu, t = int(m.group(1)), float(m.group(2))
            comm, tid = m.group(3), int(m.group(4))
            own = tid in proxy if cpu == proxy_cpu else comm.startswith("weir-bench-")
            began = last.get(cpu)
            if began is not None and tid != 0 and not own and (t - began) * 1e6 >= HELD_US:
                side = "proxy" if cpu == proxy_cpu else "load"
                runs.append((began, t, f"{comm} on the {side} CPU"))
            last[cpu] = t
    return runs


def episodes_of(path):
    """(start s, end s, slow requests) of each latency episode, and the totals."""
    start_ns = None
    slots = []
    total = slow_total = 0
    with open(path) as f:
        for line in f:
            if line.startswith("# start_ns "):
                start_ns = int(line.split()[2])
                continue
            ms, max_us, count, slow = map(int, line.split())
            total += count
            slow_total += slow
            if max_us >= SLOW_US:
                slots.append((ms, max_us, slow))
    if start_ns is None:
        sys.exit(f"{path}: no '# start_ns' line")
    episodes = []
    for ms, max_us, slow in slots:
        if episodes and ms - episodes[-1][1] < MERGE_MS:
            first, _, worst, n = episodes[-1]
            episodes[-1] = (first, ms, max(worst, max_us), n + slow)
        else:
            episodes.append((ms, ms, max_us, slow))
    base = start_ns / 1e9
    # A request due in the episode's last millisecond may wait up to the worst latency.
    return ([(base + first / 1e3, base + (last + 1) / 1e3 + worst / 1e6, n)
             for first, last, worst, n in episodes], total, slow_total)


def main():
    label, json_path, timeline, switches, proxy_cpu, tids = sys.argv[1:]
    proxy = {int(t) for t in tids.split(",") if t}
    result = json.load(open(json_path))
    others = runs_of_others(switches, int(proxy_cpu), proxy)
    episodes, total, slow = episodes_of(timeline)

    held = collections.defaultdict(list)
    for start, end, comm in others:
        held[comm].append((end - start) * 1e6)
    blamed = collections.Counter()
    slow_blamed = 0
    for start, end, n in episodes:
        hit = sorted({comm for s, e, comm in others if s < end and e > start})
        if hit:
            slow_blamed += n
            for comm in hit:
                blamed[comm] += 1
    explained = sum(1 for start, end, _ in episodes
                    if any(s < end and e > start for s, e, _ in others))

    print(f"{label}: p50 {result['p50_us']:.0f} µs, p99 {result['p99_us']:.0f} µs, "
          f"p99.9 {result['p999_us']:.0f} µs, max {result['max_us']:.0f} µs "
          f"({result['completed']:,} answered, {result['errors']} errors)")
    if held:
        listed = sorted(held.items(), key=lambda kv: -sum(kv[1]))
        print(f"  other tasks holding a CPU ≥ {HELD_US} µs at a time: " + "; ".join(
            f"{comm} {len(d)}× (total {sum(d) / 1e3:.1f} ms, longest {max(d) / 1e3:.1f} ms)"
            for comm, d in listed[:6]))
    else:
        print(f"  no other task held either CPU for {HELD_US} µs or more at a time")
    print(f"  latency episodes (a millisecond's worst request ≥ {SLOW_US / 1e3:.0f} ms): "
          f"{len(episodes)}, {explained} of them while another task held a CPU"
          + (" (" + ", ".join(f"{c} {n}" for c, n in blamed.most_common(6)) + ")" if blamed else ""))
    share = 100 * slow / total if total else 0
    blamed_share = 100 * slow_blamed / slow if slow else 0
    print(f"  requests ≥ {SLOW_US / 1e3:.0f} ms: {slow:,} of {total:,} ({share:.2f} %); "
          f"{blamed_share:.0f} % of them in those episodes")


if __name__ == "__main__":
    main()
