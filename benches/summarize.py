#!/usr/bin/env python3
"""Prints criterion's latest estimates for the curfew/tokio bench groups as a
markdown table: each group's tokio and curfew time and their ratio, and the
geometric mean of the ratios.

    python3 benches/summarize.py [CRITERION_DIR] [GROUP ...]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion (or target/criterion).
"""
import json
import math
import os
import sys


def estimate(d):
    with open(os.path.join(d, "new", "estimates.json")) as f:
        e = json.load(f)
    return e["median"]["point_estimate"], e["mean"]["point_estimate"]


def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns:.1f} ns"


def main():
    args = sys.argv[1:]
    root = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    if args and os.path.isdir(args[0]):
        root, args = args[0], args[1:]
    groups = args or sorted(os.listdir(root))
    print("| workload | tokio (median) | curfew (median) | curfew / tokio |")
    print("| --- | ---: | ---: | ---: |")
    ratios = []
    for g in groups:
        gd = os.path.join(root, g)
        t, c = os.path.join(gd, "tokio"), os.path.join(gd, "curfew")
        if not (os.path.isdir(t) and os.path.isdir(c)):
            continue
        tm, _ = estimate(t)
        cm, _ = estimate(c)
        r = cm / tm
        ratios.append(r)
        print(f"| {g} | {fmt(tm)} | {fmt(cm)} | {r:.3f}x |")
    if ratios:
        gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"| geometric mean | | | {gm:.3f}x |")


if __name__ == "__main__":
    main()
