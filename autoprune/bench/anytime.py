"""Time to quality: each benchmark cell's best-so-far proxy accuracy against wall-clock seconds.

A cell records, for every evaluation, the best proxy accuracy within the budget so far (``curve``) and the
wall-clock and CPU seconds since its search started (``curve_seconds``, ``curve_cpu_seconds``). The report's
anytime section gives, per method, the accuracy reached at fixed fractions of the longest cell's time and the
time taken to reach the best CMA-ES result (the Optuna CMA-ES spec with the highest mean final proxy accuracy).
Time is CPU seconds when every cell recorded them (a one-thread process's CPU time does not grow when other
work shares the machine), wall-clock seconds otherwise.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.bench.settings import parse_method
from autoprune.bench.stats import mean_std
from autoprune.errors import ConfigError
from autoprune.plotting import pyplot, save_figure

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
"""Fractions of the longest cell's wall time at which every method's best-so-far is read."""


def timed(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells that recorded when each evaluation finished, each with ``clock`` (the times the report reads:
    CPU seconds when every such cell has them, else wall-clock) and ``clock_total``."""
    cells = [c for c in cells if c.get("curve_seconds")]
    cpu = bool(cells) and all(c.get("curve_cpu_seconds") for c in cells)
    return [{**c, "clock": c["curve_cpu_seconds"] if cpu else c["curve_seconds"],
             "clock_total": c["cpu_seconds"] if cpu else c["seconds"], "clock_kind": "CPU" if cpu else "wall-clock"}
            for c in cells]


def best_at(cell: dict[str, Any], seconds: float) -> float | None:
    """The cell's best proxy accuracy within the budget after ``seconds`` of search (None before the first)."""
    best = None
    for value, at in zip(cell["curve"], cell["clock"]):
        if at > seconds:
            break
        best = value if value is not None else best
    return best


def time_to(cell: dict[str, Any], target: float) -> float | None:
    """Seconds until the cell's best-so-far first reached ``target`` (None if it never did)."""
    for value, at in zip(cell["curve"], cell["clock"]):
        if value is not None and value >= target - 1e-12:
            return float(at)
    return None


def reference(cells: list[dict[str, Any]]) -> tuple[str, float] | None:
    """The CMA-ES spec with the highest mean final proxy accuracy among ``cells``, and that mean."""
    means: dict[str, list[float]] = {}
    for c in cells:
        try:
            variant = parse_method(c["method"])[1]
        except ConfigError:  # a method not registered in this process
            continue
        if variant == "cmaes":
            means.setdefault(c["method"], []).append(c["proxy_acc"])
    if not means:
        return None
    spec = max(means, key=lambda m: float(np.mean(means[m])))
    return spec, float(np.mean(means[spec]))




def anytime_section(cells: list[dict[str, Any]]) -> list[str]:
    """Markdown: per budget, the accuracy each method reaches at fractions of the longest cell's time, and the time
    it takes to reach the best CMA-ES result (empty when no cell recorded its timing)."""
    cells = timed(cells)
    if not cells:
        return []
    kind = cells[0]["clock_kind"]
    lines = ["", "## Time to quality", "",
             (f"Best proxy accuracy within the budget (%) after a fraction of the longest cell's search time ({kind} "
              "seconds; cells that finished sooner keep their final value), and the search time each method needs to "
              "reach the best CMA-ES result; mean ± std over seeds.")]
    for budget in dict.fromkeys(c["budget"] for c in cells):
        mine = [c for c in cells if c["budget"] == budget]
        longest = max(c["clock_total"] for c in mine)
        ref = reference(mine)
        target = f"time to {100 * ref[1]:.2f}% ({ref[0]}'s mean) (s)" if ref else "time to CMA-ES (s)"
        lines += ["", f"### {budget} (longest cell {longest:.0f} {kind} s)", "",
                  "| method | seeds | racing | " + " | ".join(f"{f:.0%} of time" for f in FRACTIONS) +
                  f" | test acc (%) | search (s) | {target} | reached |",
                  "|---|---:|---|" + "---:|" * (len(FRACTIONS) + 4)]
        for method in dict.fromkeys(c["method"] for c in mine):
            group = [c for c in mine if c["method"] == method]
            at = [[v for c in group if (v := best_at(c, f * longest)) is not None] for f in FRACTIONS]
            times = [t for c in group if ref and (t := time_to(c, ref[1])) is not None]
            racing = group[0].get("racing")
            lines.append(
                f"| {method} | {len(group)} | {'→'.join(map(str, racing)) if racing else 'off'} | "
                + " | ".join(mean_std(v) for v in at)
                + f" | {mean_std([c['report_acc'] for c in group])} | {mean_std([c['clock_total'] for c in group], 1, 0)} | "
                f"{mean_std(times, 1, 0) if ref else '—'} | {len(times)}/{len(group)} |")
    return lines


def plot_anytime(cells: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Best-so-far proxy accuracy against wall-clock seconds, mean over seeds, one panel per budget."""
    import matplotlib

    plt = pyplot()
    cells = timed(cells)
    budgets = list(dict.fromkeys(c["budget"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    cmap = matplotlib.colormaps["tab20"]
    fig, axes = plt.subplots(1, len(budgets), figsize=(max(7.0, 6.0 * len(budgets)), 4.6), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        mine = [c for c in cells if c["budget"] == budget]
        longest = max(c["clock_total"] for c in mine)
        grid = np.linspace(0.0, longest, 200)
        for i, method in enumerate(methods):
            group = [c for c in mine if c["method"] == method]
            if not group:
                continue
            values = np.array([[np.nan if (v := best_at(c, t)) is None else v for t in grid] for c in group])
            with warnings.catch_warnings():  # before a cell's first candidate its value is missing
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(values, axis=0)
            style = "--" if method.endswith("@full") else "-"
            ax.plot(grid, 100 * mean, style, label=method, color=cmap(i % 20))
        ref = reference(mine)
        if ref:
            ax.axhline(100 * ref[1], color="black", linestyle=":", linewidth=1, label=f"{ref[0]} final (mean)")
        ax.set_xlabel(f"search time ({mine[0]['clock_kind']} seconds)")
        ax.set_ylabel("best proxy accuracy within budget (%)")
        ax.set_title(budget, fontsize=10)
        ax.grid(alpha=0.3)
        finals = sorted(c["proxy_acc"] for c in mine)
        ax.set_ylim(100 * (finals[len(finals) // 2] - 0.06), 100 * (finals[-1] + 0.01))  # methods far below: the table
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path, f"{title}: best-so-far proxy accuracy against search time (mean over seeds)")
