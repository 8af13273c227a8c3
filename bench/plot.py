#!/usr/bin/env python3
"""Draw the speed-up plot from a results file of bench/run.py.

    bench/.venv/bin/python bench/plot.py [bench/results.json] [bench/speedup.png]

One panel per suite: each case's speed-up over the suite's reference (the
sequential pipeline; `LC_ALL=C sort --parallel=2`), one bar per corpus size.
Needs matplotlib (bench/setup_peers.sh installs it in bench/.venv).
"""
import json
import os
import sys

import matplotlib

from run import paired_ratio

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
OURS = ("cluster", "ours")


def speedups(rows):
    """{case: {size: speed-up over the first case of the same size}}, as in the tables."""
    by_size = {}
    for row in rows:
        by_size.setdefault(row["size_mib"], []).append(row)
    result = {}
    for size, group in by_size.items():
        reference = group[0]
        for row in group:
            if row["median"] and reference["median"]:
                result.setdefault(row["case"], {})[size] = paired_ratio(reference, row)
    return result


def draw(axis, title, values):
    cases = list(values)
    sizes = sorted({size for per_size in values.values() for size in per_size})
    height = 0.8 / max(1, len(sizes))
    for number, size in enumerate(sizes):
        positions = [index + number * height for index in range(len(cases))]
        bars = [values[case].get(size, 0) for case in cases]
        axis.barh(positions, bars, height, label=f"{size:g} MiB")
        for position, value in zip(positions, bars):
            if value:
                axis.text(value, position, f" {value:.2f}×", va="center", fontsize=7)
    axis.set_yticks([index + height * (len(sizes) - 1) / 2 for index in range(len(cases))])
    axis.set_yticklabels(cases, fontsize=8)
    for label in axis.get_yticklabels():
        if label.get_text().startswith(OURS):
            label.set_fontweight("bold")
    axis.invert_yaxis()
    axis.axvline(1.0, color="grey", linewidth=0.8)
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("speed-up (higher is faster)")
    axis.legend(fontsize=8, loc="lower right")


def main(argv):
    source = argv[1] if len(argv) > 1 else os.path.join(BENCH, "results.json")
    target = argv[2] if len(argv) > 2 else os.path.join(BENCH, "speedup.png")
    with open(source) as handle:
        results = json.load(handle)
    suites = {}
    for row in results["cases"]:
        suites.setdefault(row["suite"], []).append(row)
    titles = {"wordcount": "word count: speed-up over cat | map | LC_ALL=C sort | reduce",
              "sort": "sorting 100-byte records: speed-up over LC_ALL=C sort --parallel=2"}
    heights = [len({row["case"] for row in rows}) for rows in suites.values()]
    figure, axes = plt.subplots(len(suites), 1, figsize=(9, 0.45 * sum(heights) + 2),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, (suite, rows) in zip(axes[:, 0], suites.items()):
        draw(axis, titles.get(suite, suite), speedups(rows))
    runs = sorted({len(row["seconds"]) for row in results["cases"] if row["seconds"]})
    figure.suptitle(f"{results['machine']['cpus']} cores, {results['machine']['memory_gib']:g} "
                    f"GiB; medians of {' or '.join(map(str, runs))} runs; {results['date']}",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv)
