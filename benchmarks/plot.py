"""Draw the results of ``benchmarks/run.py`` as a PNG bar chart (needs matplotlib; optional).

Usage::

    python -m benchmarks.plot [RESULTS_JSON] [-o OUT_PNG]

One panel per row of the table (workload x metric), one bar per peer. Without matplotlib it says
so and exits 0: the plot is never required.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")
if __package__:
    from .run import ROWS
else:  # run as a script: python benchmarks/plot.py
    sys.path.insert(0, HERE)
    from run import ROWS

COLORS = {
    "hein": "#d62728",
    "pyzmq-json": "#1f77b4",
    "pyzmq-pickle": "#17becf",
    "hein-0.2.3": "#7f7f7f",
    "plain-socket": "#2ca02c",
}


def _short(number):
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return "%.3g%s" % (number / scale, suffix)
    return "%.3g" % number


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default=DEFAULT_JSON)
    parser.add_argument(
        "-o", "--output", default=None, help="PNG to write (default: beside the JSON)"
    )
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return 0
    with open(args.json) as handle:
        document = json.load(handle)
    header = document["table"]["header"]
    peers = [p for p in header[3:] if "/" not in p]
    results = document["results"]
    panels = []
    for workload, key, label, better, _ in ROWS:
        cells = results.get(workload, {})
        values = []
        for peer in peers:
            cell = cells.get(peer) or {}
            value = (cell.get("metrics") or {}).get(key)
            values.append(None if value is None else (value, cell.get("status") == "ok"))
        if any(v is not None for v in values):
            panels.append(("%s %s (%s is better)" % (workload, label, better), values, better))
    if not panels:
        print("nothing to plot in %s" % args.json)
        return 0
    columns = 3
    lines = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.2 * lines), squeeze=False)
    for index, (title, values, better) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        shown = [(p, v) for p, v in zip(peers, values) if v is not None]
        names = [p for p, _ in shown]
        numbers = [v[0] for _, v in shown]
        complete = [v[1] for _, v in shown]
        bars = axis.bar(range(len(shown)), numbers, color=[COLORS.get(p, "#999999") for p in names])
        axis.set_xticks(range(len(shown)))
        axis.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        axis.set_title(title, fontsize=9)
        if numbers and max(numbers) > 50 * max(min(numbers), 1e-9):
            axis.set_yscale("log")
        for bar, number, ok in zip(bars, numbers, complete):
            axis.annotate(
                _short(number) + ("" if ok else "*"),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    for index in range(len(panels), lines * columns):
        axes[index // columns][index % columns].axis("off")
    machine = document.get("machine", {})
    figure.suptitle(
        "hein benchmarks (%s mode), %s, %s cores, Python %s (* partial: timed out or stalled)"
        % (
            document.get("mode"),
            document.get("date", "")[:10],
            machine.get("nproc"),
            machine.get("python"),
        )
    )
    figure.tight_layout()
    output = args.output or os.path.splitext(args.json)[0] + ".png"
    figure.savefig(output, dpi=100)
    print("plot written to %s" % output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
