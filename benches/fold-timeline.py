#!/usr/bin/env python3
"""Where in the attack period benign throughput is lost.

Folds the attack windows of a study's `timeline.csv` over the attack
period: each bucket's benign requests/s, as a share of its phase's
baseline, is filed under the time since the last attack request was sent,
and averaged per region of the period, per attack. Run the study with
narrow buckets, so that the regions are resolved:

    curfew-lab study --modes curfew-supervised --phases attacks \\
        --bucket 10ms --out lab-out
    benches/fold-timeline.py lab-out/timeline.csv

Several runs compare side by side as LABEL=PATH arguments (each PATH a
`timeline.csv`; runs with one label are pooled):

    benches/fold-timeline.py idle=a/timeline.csv nice=b/timeline.csv

The regions, in ms from the attack request: 0-10 (the poll holds its
event thread, before a hand-off at 10 ms), 10-100 (until the 100 ms
budget), 100-130 (the timeout, the recycle and the switch to the spare),
130-200, 200-500 (until the next request at 2/s), and the whole period.
The period is 1/rate of the attack (2/s by default: 0.5 s); give another
with --period SECONDS. The baseline is the phase's buckets from 0.3 s to
the window's start.
"""
import argparse
import collections
import csv
import statistics

REGIONS = [(0, 10), (10, 100), (100, 130), (130, 200), (200, 500), (0, 500)]


def phases(path):
    by = collections.defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f):
            by[(r["attack"], r["repeat"])].append(r)
    return by


def fold(path, period, into):
    for (attack, _), rows in phases(path).items():
        window = [r for r in rows if r["in_attack_window"] == "true"]
        if not window:
            continue
        start = float(window[0]["bucket_start_s"])
        base = [
            float(r["rps"])
            for r in rows
            if 0.3 <= float(r["bucket_start_s"]) < start
        ]
        if not base or statistics.mean(base) == 0:
            continue
        b = statistics.mean(base)
        regions = collections.defaultdict(list)
        for r in window:
            ms = round(((float(r["bucket_start_s"]) - start) % period) * 1000, 3)
            for lo, hi in REGIONS:
                if lo <= ms < (hi if hi < 500 else period * 1000):
                    regions[(lo, hi)].append(float(r["rps"]) / b)
        for region, shares in regions.items():
            into[(attack, region)].append(statistics.mean(shares))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="timeline.csv or LABEL=timeline.csv")
    ap.add_argument("--period", type=float, default=0.5)
    args = ap.parse_args()
    labels = collections.OrderedDict()
    for run in args.runs:
        label, _, path = run.rpartition("=")
        labels.setdefault(label or "run", []).append(path)
    head = " ".join(f"{f'{lo}-{hi} ms':>11}" for lo, hi in REGIONS[:-1])
    print(f"{'run':8} {'attack':16} {'phases':>6} {head} {'period':>8}")
    for label, paths in labels.items():
        data = collections.defaultdict(list)
        for p in paths:
            fold(p, args.period, data)
        for attack in sorted({a for a, _ in data}):
            cells = []
            for region in REGIONS:
                v = data.get((attack, region), [])
                cells.append(f"{statistics.mean(v) * 100:10.1f}%" if v else f"{'-':>11}")
            n = len(data.get((attack, REGIONS[-1]), []))
            print(f"{label:8} {attack:16} {n:6} {' '.join(cells[:-1])} {cells[-1]:>8}")


if __name__ == "__main__":
    main()
