#!/usr/bin/env python3
"""Helpers for tools/bench.sh (standard library only; etcd is reached through `etcdctl`).

  bench.py port                                   a free TCP port on 127.0.0.1
  bench.py wait-key ENDPOINT KEY TIMEOUT OUT      epoch seconds when KEY is first put (a watch
                                                  from revision 1, so an earlier put counts too)
  bench.py latency ENDPOINT PREFIX DIR TIMEOUT    commit -> watch latency of the rows put under
                                                  PREFIX (their JSON value's `ts` is the commit
                                                  time); DIR/ready once the first row was seen,
                                                  stops when DIR/expect (a row count) is reached,
                                                  writes DIR/latency.json
  bench.py count ENDPOINT PREFIX                  number of keys under PREFIX
  bench.py value-size ENDPOINT KEY                bytes of KEY's value
  bench.py first-key ENDPOINT PREFIX              the first key under PREFIX
  bench.py metrics URL                            one line per etcdsync histogram: count, mean,
                                                  p50, p99 (from the buckets); then the counters
                                                  of etcd transactions, resends, retries, errors
  bench.py table FILE                             the results (tab-separated rows) as a Markdown table
"""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def etcdctl(endpoint, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}
    env["ETCDCTL_API"] = "3"
    return ["etcdctl", f"--endpoints={endpoint}", "--dial-timeout=5s", *args], env


def run_etcdctl(endpoint, *args):
    cmd, env = etcdctl(endpoint, "--command-timeout=120s", *args)
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


def cmd_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def cmd_wait_key(endpoint, key, timeout, out):
    cmd, env = etcdctl(endpoint, "watch", "--rev=1", key)
    watch = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # Stopped by the script (a figure ends early): the watch must not outlive us.
    signal.signal(signal.SIGTERM, lambda *_: (watch.kill(), sys.exit(1)))
    timer = threading.Timer(float(timeout), watch.kill)
    timer.start()
    seen = None
    for line in watch.stdout:
        if line.rstrip("\n") == key:
            seen = time.time()
            break
    timer.cancel()
    watch.kill()
    watch.wait()
    if seen is None:
        print(f"bench.py: {key} did not appear within {timeout} s", file=sys.stderr)
        sys.exit(1)
    with open(out, "w") as f:
        f.write(f"{seen:.6f}\n")


def percentile(sorted_values, q):
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def cmd_latency(endpoint, prefix, directory, timeout):
    cmd, env = etcdctl(endpoint, "watch", "--prefix", prefix)
    watch = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    signal.signal(signal.SIGTERM, lambda *_: watch.kill())
    ts_re = re.compile(r'"ts":(-?[0-9.eE+-]+)')
    samples = []
    first = None
    last_arrival = None
    expect = None
    deadline = None
    stop = threading.Event()

    def watchdog():
        # Ends the watch once the expected count is known and reached, or after the timeout.
        nonlocal expect, deadline
        started = time.monotonic()
        while not stop.wait(0.2):
            if expect is None and os.path.exists(os.path.join(directory, "expect")):
                with open(os.path.join(directory, "expect")) as f:
                    expect = int(f.read().strip())
                deadline = time.monotonic() + 30
            if expect is not None and (len(samples) + 1 >= expect or time.monotonic() > deadline):
                break
            if time.monotonic() - started > float(timeout):
                break
        watch.kill()

    threading.Thread(target=watchdog, daemon=True).start()
    previous = ""
    for line in watch.stdout:
        arrived = time.time()
        if previous.startswith(prefix):
            match = ts_re.search(line)
            if match:
                if first is None:
                    first = arrived
                    open(os.path.join(directory, "ready"), "w").close()
                else:
                    samples.append((arrived - float(match.group(1))) * 1000.0)
                    last_arrival = arrived
        previous = line
    stop.set()
    watch.wait()
    ordered = sorted(samples)
    result = {
        "rows": len(samples),
        "expected": expect,
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else math.nan,
        "mean_ms": sum(ordered) / len(ordered) if ordered else math.nan,
        "last_arrival": last_arrival,
    }
    with open(os.path.join(directory, "latency.json"), "w") as f:
        json.dump(result, f)


def cmd_count(endpoint, prefix):
    out = run_etcdctl(endpoint, "get", "--prefix", "--keys-only", "--limit=1", "-w", "json", prefix)
    # `count` is the whole range's, whatever the limit (etcdctl 3.4 has no --count-only).
    print(json.loads(out).get("count", 0))


def cmd_value_size(endpoint, key):
    cmd, env = etcdctl(endpoint, "--command-timeout=30s", "get", "--print-value-only", key)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True).stdout
    # etcdctl ends the value with a newline of its own.
    print(len(out[:-1]) if out.endswith(b"\n") else len(out))


def cmd_first_key(endpoint, prefix):
    out = run_etcdctl(endpoint, "get", "--prefix", "--keys-only", "--limit=1", prefix)
    keys = [line for line in out.splitlines() if line]
    if not keys:
        print(f"bench.py: no key under {prefix}", file=sys.stderr)
        sys.exit(1)
    print(keys[0])


# Counters worth a look next to the histograms.
COUNTERS = ("etcdsync_sink_txns_total", "etcdsync_sink_txns_resent_total", "etcdsync_retries_total", "etcdsync_errors_total")
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def cmd_metrics(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    series = {}
    counters = []
    for raw in text.splitlines():
        m = LINE.match(raw)
        if not m or raw.startswith("#"):
            continue
        name, labels, value = m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))
        if name in COUNTERS:
            extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "pipeline")
            counters.append(f"{name}{{{extra}}}={value:.0f}" if extra else f"{name}={value:.0f}")
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("le", "pipeline"))
                entry = series.setdefault((base, extra), {"buckets": [], "sum": 0.0, "count": 0.0})
                if suffix == "_bucket":
                    entry["buckets"].append((float(labels["le"]), value))
                elif suffix == "_sum":
                    entry["sum"] = value
                else:
                    entry["count"] = value
    for (base, extra), entry in sorted(series.items()):
        count = entry["count"]
        if not count:
            continue
        buckets = sorted(entry["buckets"])

        def quantile(q):
            for bound, cumulative in buckets:
                if cumulative >= q * count:
                    return bound
            return math.inf

        seconds = base.endswith("_seconds")
        scale, unit = (1000.0, " ms") if seconds else (1.0, "")
        fmt = lambda v: "inf" if math.isinf(v) else f"{v * scale:.3g}{unit}"
        label = f"{base}{{{extra}}}" if extra else base
        print(f"{label}: n={count:.0f} mean={fmt(entry['sum'] / count)} p50<={fmt(quantile(0.5))} p99<={fmt(quantile(0.99))}")
    if counters:
        print(" ".join(counters))


def cmd_table(path):
    header = ["figure", "etcdsync", "raw (128 ops/txn, 4 in flight)", "ratio", "goal", "met?"]
    rows = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                cells = line.split("\t")
                rows.append((cells + [""] * len(header))[: len(header)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(fmt(row))


def main(argv):
    commands = {
        "port": (cmd_port, 0),
        "wait-key": (cmd_wait_key, 4),
        "latency": (cmd_latency, 4),
        "count": (cmd_count, 2),
        "value-size": (cmd_value_size, 2),
        "first-key": (cmd_first_key, 2),
        "metrics": (cmd_metrics, 1),
        "table": (cmd_table, 1),
    }
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    commands[argv[1]][0](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
