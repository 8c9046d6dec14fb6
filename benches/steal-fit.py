#!/usr/bin/env python3
"""Reads the per-round tables that `benches/axum_server.rs` prints and fits
each mode's req/s and server CPU per request against the hypervisor's
steal time in its run (least squares over every run of the mode). Prints
the fitted value at zero steal and its ratio against tokio's.

On a virtual machine whose host is busy, a run's CPU per request grows
with the time the hypervisor takes from the guest (a correlation of 0.9
and more on this project's machines), and the modes do not suffer alike
from one round to the next. The fit asks what each mode costs on a quiet
host, from every round, not only the few quiet ones.

    python3 benches/steal-fit.py [--max-steal MS] OUTPUT [OUTPUT ...]

Each OUTPUT is a saved run of the bench, e.g.

    benches/run-prio.sh cargo bench --bench axum_server | tee run.txt

Only runs with at most MS ms of steal (default 1000, a tenth of the two
cores' time over a 5 s run) enter the fit: past that the cost stops
growing in a line, and a few such runs would pull the fit about. Latency
tails do not grow in a line with steal at all, so p99 is not fitted.
"""
import re
import statistics as st
import sys

ROW = re.compile(
    r"\| (\d+) \| (\S+) \| (\d+) \| \d+ \| (\d+) \| (\d+) \| ([\d.]+) \| (\d+) \|"
)


def main():
    args = sys.argv[1:]
    max_steal = 1000.0
    if args[:1] == ["--max-steal"] and len(args) > 1:
        max_steal = float(args[1])
        args = args[2:]
    if not args:
        sys.exit(__doc__)
    rows = []
    for path in args:
        with open(path) as f:
            for line in f:
                m = ROW.match(line)
                if m:
                    rows.append(
                        (m[2], float(m[4]), float(m[5]), float(m[6]), float(m[7]))
                    )
    if not rows:
        sys.exit("no rounds with a steal column found")
    fit = {}
    for mode in dict.fromkeys(r[0] for r in rows):
        runs = [r for r in rows if r[0] == mode and r[4] <= max_steal]
        steal = [r[4] for r in runs]
        if len(runs) < 3 or len(set(steal)) < 2:
            print(f"{mode}: {len(runs)} run(s) under {max_steal:.0f} ms of steal: too few to fit")
            continue
        fit[mode] = [
            st.linear_regression(steal, [r[i] for r in runs]).intercept
            for i in (1, 3)
        ]
        corr = st.correlation(steal, [r[3] for r in runs])
        print(
            f"{mode}: {len(runs)} runs, {min(steal):.0f}-{max(steal):.0f} ms of steal; "
            f"at zero steal {fit[mode][0]:.0f} req/s, "
            f"{fit[mode][1]:.2f} µs CPU/req (correlation of CPU/req with steal {corr:.2f})"
        )
    base = fit.get("tokio")
    for mode, v in fit.items():
        if mode != "tokio" and base:
            print(
                f"{mode} / tokio at zero steal: req/s {v[0] / base[0]:.3f}x, "
                f"CPU/req {v[1] / base[1]:.3f}x"
            )


if __name__ == "__main__":
    main()
