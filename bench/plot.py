#!/usr/bin/env python3
"""Throughput against clients, ipamd and DANM's algorithm: runs target/release/bench for
each client count and draws bench/throughput.svg (standard library only).

    cargo build --release -p danm-ipamd -p danm-bench
    python3 bench/plot.py [--fill 2000] [--clients 1,2,4,8,16,32,64]
"""

import argparse
import json
import math
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def measure(clients, fill):
    out = subprocess.run(
        [str(ROOT / "target/release/bench"), "--clients", str(clients), "--fill", str(fill), "--churn", "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out)
    return (
        report["ipamd"]["fill"]["allocations_per_second"],
        report["danm_baseline"]["fill"]["allocations_per_second"],
    )


def svg(points, path):
    width, height, left, right, top, bottom = 680, 420, 70, 150, 40, 50
    xs = [c for c, _, _ in points]
    ys = [v for _, a, b in points for v in (a, b)]
    lo = 10 ** math.floor(math.log10(min(ys)))
    hi = 10 ** math.ceil(math.log10(max(ys)))

    def x(c):
        span = math.log2(max(xs)) - math.log2(min(xs)) or 1
        return left + (math.log2(c) - math.log2(min(xs))) / span * (width - left - right)

    def y(v):
        return top + (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14">Allocations per second against concurrent clients (3 replicas, /16, real API server)</text>',
    ]
    decade = lo
    while decade <= hi:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y(decade) + 4:.1f}" text-anchor="end">{decade:g}</text>')
        decade *= 10
    for c in xs:
        parts.append(f'<line x1="{x(c):.1f}" x2="{x(c):.1f}" y1="{top}" y2="{height - bottom}" stroke="#eee"/>')
        parts.append(f'<text x="{x(c):.1f}" y="{height - bottom + 18}" text-anchor="middle">{c}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">clients</text>')
    for index, (name, colour) in enumerate([("ipamd", "#1f77b4"), ("DANM's algorithm", "#d62728")]):
        line = " ".join(f"{x(c):.1f},{y(p[index]):.1f}" for c, *p in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for c, *p in points:
            parts.append(f'<circle cx="{x(c):.1f}" cy="{y(p[index]):.1f}" r="3" fill="{colour}"/>')
        last = points[-1][1 + index]
        parts.append(f'<text x="{width - right + 8}" y="{y(last) + 4:.1f}" fill="{colour}">{name} ({last:,.0f}/s)</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=int, default=2000)
    parser.add_argument("--clients", default="1,2,4,8,16,32,64")
    args = parser.parse_args()
    points = []
    for clients in [int(c) for c in args.clients.split(",")]:
        ours, theirs = measure(clients, args.fill)
        print(json.dumps({"clients": clients, "ipamd": ours, "danm_baseline": theirs}))
        points.append((clients, ours, theirs))
    svg(points, ROOT / "bench/throughput.svg")


if __name__ == "__main__":
    main()
