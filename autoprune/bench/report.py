"""The benchmark report: a markdown table per budget (mean ± std over seeds), a CSV of every cell and PNG plots.

``<out>/<name>.md`` starts with the machine, library versions, the dense baseline and the exact
command; ``<name>.csv`` holds one row per cell; ``<name>-tradeoff.png`` plots test accuracy against
FLOPs with error bars per method, ``<name>-ratios.png`` the per-unit ratio profile of each method's
best policy, ``<name>-curves.png`` the best proxy accuracy found after each evaluation and, for cells that
timed their evaluations, ``<name>-anytime.png`` the same against wall-clock seconds (:mod:`autoprune.bench.anytime`). A
``findings.md`` written by hand beside the cells is appended as the report's last section.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autoprune.bench.anytime import anytime_section, plot_anytime, timed
from autoprune.bench.machine import machine_header
from autoprune.bench.settings import OPTIONS_SEPARATOR, BenchSettings, parse_method
from autoprune.bench.stats import mean_std
from autoprune.console import plural
from autoprune.core.cost import FLOPS_LABEL
from autoprune.errors import ConfigError
from autoprune.plotting import pyplot, save_figure
from autoprune.search import get_searcher, methods_where

FINDINGS = "findings.md"  # beside the cells: what a person learned from them, appended to the report
NUMBERS = ("evals", "distinct", "seconds", "evals_per_min", "proxy_acc", "report_acc", "finetuned_acc",
           "flops_fraction", "flops", "params", "latency_ms", "reference_ms")
COLUMNS = ("method", "budget", "seed", *NUMBERS, "machine", "versions", "finished")


def cells_frame(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell with the report's columns (NaN where a cell did not measure something)."""
    rows = []
    for c in cells:
        rows.append({
            "method": c["method"], "budget": c["budget"], "seed": c["seed"], "evals": c["evals"],
            "distinct": c.get("distinct"),
            "seconds": c["seconds"], "evals_per_min": 60.0 * c["evals"] / c["seconds"],
            "proxy_acc": c["proxy_acc"], "report_acc": c["report_acc"], "finetuned_acc": c.get("finetuned_acc"),
            "flops_fraction": c["flops"] / c["dense_flops"], "flops": c["flops"], "params": c["params"],
            "latency_ms": c.get("latency_ms"), "reference_ms": c.get("reference_ms_per_image"),
            "machine": c.get("machine"),
            "versions": c.get("versions"), "finished": c.get("finished"),
        })
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype({k: float for k in NUMBERS})




def _stats(frame: pd.DataFrame, column: str) -> dict[str, tuple[float, float | None]]:
    """Per method: mean and std over seeds of ``column`` (std 0 for a deterministic method, None for one seed
    of a stochastic one)."""
    out = {}
    for method, group in frame.groupby("method", sort=False):
        values = group[column].dropna()
        if len(values):
            std = float(values.std()) if len(values) > 1 else 0.0 if _deterministic(method) else None
            out[method] = (float(values.mean()), std)
    return out


def _deterministic(spec: str) -> bool:
    """Whether the benchmark's method spec names a deterministic searcher (one seed, std 0); False for a method
    not registered in this process (cells of a user's searcher, reported without it)."""
    try:
        return get_searcher(parse_method(spec)[0]).deterministic
    except ConfigError:
        return False


def _versus(stats: dict[str, tuple[float, float | None]], method: str, base: str, either_way: bool = False) -> str:
    """``+1.23 ✓`` when ``method`` beats ``base`` by more than one std (the larger of the two; with ``either_way``
    also a loss by more than that), ``-0.40`` otherwise; ``?`` marks a difference whose std is unknown (one seed)."""
    (mean, std), (b_mean, b_std) = stats[method], stats[base]
    diff = 100 * (mean - b_mean)
    if std is None or b_std is None:
        return f"{diff:+.2f} ?"
    return f"{diff:+.2f}" + (" ✓" if (abs(diff) if either_way else diff) > 100 * max(std, b_std) else "")


def comparison_table(frame: pd.DataFrame, columns: list[tuple[str, str]]) -> list[str]:
    """Markdown: the best method per metric, then each searched method's gain over uniform and random search."""
    stats = {column: _stats(frame, column) for column, _ in columns}
    columns = [(c, label) for c, label in columns if stats[c]]
    if not columns:
        return []
    lines = ["| | " + " | ".join(label for _, label in columns) + " |", "|---|" + "---:|" * len(columns),
             "| best mean | " + " | ".join(f"**{max(stats[c], key=lambda m: stats[c][m][0])}**" for c, _ in columns) + " |"]
    baselines = methods_where("baseline")
    for method in dict.fromkeys(frame["method"]):
        if method in baselines:
            continue
        for base in baselines:
            if all(method in stats[c] and base in stats[c] for c, _ in columns):
                lines.append(f"| {method} − {base} (points) | " +
                             " | ".join(_versus(stats[c], method, base) for c, _ in columns) + " |")
    return lines


def _options(method: str) -> frozenset[str]:
    """The ``option=value`` items of a ``method:options`` row."""
    return frozenset(item for item in method.partition(OPTIONS_SEPARATOR)[2].split(",") if item)


def ablation_base(method: str, methods: list[str]) -> str | None:
    """The row a variant ``method:options`` is compared with: the same method with the most of its options and
    not all of them (the method's defaults when no other row shares any; of equals, the first); None when the frame
    has no such row."""
    name = method.partition(OPTIONS_SEPARATOR)[0]
    options = _options(method)
    bases = [m for m in methods if m.partition(OPTIONS_SEPARATOR)[0] == name and _options(m) < options]
    return max(bases, key=lambda m: len(_options(m)), default=None)


def ablation_table(frame: pd.DataFrame, columns: list[tuple[str, str]]) -> list[str]:
    """Markdown: each variant ``method:options`` against the row it adds options to (:func:`ablation_base`; the
    method with its defaults, or a variant with fewer options), marked when the difference exceeds one standard
    deviation; no lines when the frame has no such pair."""
    stats = {column: _stats(frame, column) for column, _ in columns}
    methods = list(dict.fromkeys(frame["method"]))
    pairs = [(m, ablation_base(m, methods)) for m in methods if OPTIONS_SEPARATOR in m]
    pairs = [(m, base) for m, base in pairs if base is not None]
    columns = [(c, label) for c, label in columns if all(m in stats[c] and b in stats[c] for m, b in pairs)]
    if not pairs or not columns:
        return []
    lines = ["", "Ablation: each variant against the row it adds options to, its method's defaults or a variant with "
             "fewer options (points; ✓: more than one std either way).", "",
             "| | " + " | ".join(label for _, label in columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {m} − {base} | " + " | ".join(_versus(stats[c], m, base, either_way=True) for c, _ in columns) + " |"
              for m, base in pairs]
    return lines


def write_report(settings: BenchSettings, cells: list[dict[str, Any]], dense: dict[str, Any],
                 scan: dict[str, Any] | None, command: list[str]) -> list[Path]:
    """Write the markdown report, the CSV and the plots; returns their paths."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = cells_frame(cells)
    name = settings.title
    csv = out / f"{name}.csv"
    frame.to_csv(csv, index=False, float_format="%.6g")
    plots = [plot_tradeoff(frame, dense, out / f"{name}-tradeoff.png", name),
             plot_ratios(cells, out / f"{name}-ratios.png", name),
             plot_curves(cells, out / f"{name}-curves.png", name)]
    if timed(cells):
        plots.append(plot_anytime(cells, out / f"{name}-anytime.png", name))
    lines = _markdown(settings, frame, dense, scan, command, csv, plots, anytime_section(cells))
    lines += findings_section(settings.cell_dir, out)
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return [md, csv, *plots]


def measured_on(frame: pd.DataFrame) -> list[str]:
    """Where, when and with which libraries the cells were measured (the header above describes the machine and
    libraries that wrote the report)."""
    lines = []
    for (machine, versions), g in frame.groupby(["machine", "versions"], sort=False, dropna=False):
        if pd.isna(machine):
            continue
        with_versions = "" if pd.isna(versions) else f"; {versions}"
        speed = g["reference_ms"].dropna()
        reference = (f"; the dense network's forward passes took {speed.min():.2f}-{speed.max():.2f} ms of CPU per "
                     f"image at the end of {plural(len(speed), 'cell')} (the machine's speed then: compare seconds "
                     f"through it)" if len(speed) else "")
        lines.append(f"- cells measured on: {machine}{with_versions} ({len(g)} cells, finished {g['finished'].min()} "
                     f"to {g['finished'].max()}{reference})")
    unknown = int(frame["machine"].isna().sum())
    if unknown:
        lines.append(f"- {unknown} cells do not record their machine (made before autoprune recorded it)")
    return lines


def _markdown(settings: BenchSettings, frame: pd.DataFrame, dense: dict[str, Any], scan: dict[str, Any] | None,
              command: list[str], csv: Path, plots: list[Path], sections: list[str]) -> list[str]:
    env = settings.env
    finetuned = settings.finetune_epochs > 0
    lines = [f"# Pruning-policy search methods on {settings.title}", ""]
    lines += machine_header(command)
    lines += measured_on(frame)
    lines += [
        f"- network: {env['model']} with weights `{env['weights']}`, data {env['dataset']}; search space "
        f"`{env['search_space']}` ({dense['units']} units), channel criterion {env['criterion']}",
        f"- one Evaluator for every method: proxy accuracy on {dense['proxy_images']} images of the "
        f"`{env['splits']['proxy']}` split after BatchNorm recalibration on {dense['calibration_images']} "
        f"`{env['splits']['calibration']}` images; {FLOPS_LABEL}; the same budget projection",
        f"- test accuracy: the `{env['splits']['report']}` split (disjoint from the proxy split), BN recalibrated the "
        f"same way, no fine-tuning" + ("" if not settings.latency else
                                       f"; latency: median of 30 forward passes, batch 1, "
                                       f"{plural(settings.threads, 'CPU thread')}, on {settings.device}"),
        f"- {plural(settings.evals, 'evaluation')} per cell (episodes for rl methods, a third of them warm-up up to 100); "
        f"seeds {', '.join(map(str, range(settings.seeds)))}; {' and '.join(methods_where('deterministic'))} are deterministic and run one seed; "
        f"NetAdapt's first step is sized so that its iterations fit the evaluations",
        ("- fine-tune, the same for every method: " + f"{plural(settings.finetune_epochs, 'epoch')} of SGD (lr 0.01, momentum "
         f"0.9, cosine) on {settings.finetune_images or 'all'} `{env['splits']['calibration']}` images, from the "
         "BN-recalibrated pruned network") if finetuned else "- no fine-tuning (--finetune-epochs 0)",
        f"- dense network, scored exactly like a candidate: proxy {100 * dense['proxy_acc']:.2f}%, test "
        f"{100 * dense['report_acc']:.2f}%, {dense['flops'] / 1e6:.2f}M FLOPs (MACs), {dense['params'] / 1e6:.3f}M "
        f"params" + (f", {dense['latency_ms']:.2f} ms" if dense.get("latency_ms") is not None else ""),
        f"- every cell: [{csv.name}]({csv.name}); mean ± std over seeds below; distinct policies: evaluations "
        f"that were not a repeat of an earlier policy of the same cell (repeats are served by the Evaluator's cache; "
        f"— where a cell of the row was made before autoprune counted them)",
    ]
    if scan is not None:
        cost = f"{scan['seconds']:.0f} s" if scan.get("seconds") is not None else "read from an earlier cache"
        lines.append(f"- the sensitivity scan behind `sensitivity` and the `+sensitivity` priors ({plural(scan['evaluations'], 'evaluation')}, ratios {scan['ratios']}, "
                     f"{cost}) is made once and shared by those cells at every budget and seed; it is not counted in "
                     f"their evaluations or search time")
    for budget in dict.fromkeys(frame["budget"]):
        part = frame[frame["budget"] == budget]
        lines += ["", f"## {budget}", "",
                  "| method | seeds | proxy acc (%) | test acc (%) | test acc after fine-tune (%) | FLOPs / dense | "
                  "params (M) | latency (ms) | search (s) | evals | distinct policies | evals/min |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, g in part.groupby("method", sort=False):
            lines.append(
                f"| {method} | {len(g)} | {mean_std(g.proxy_acc, 100)} | {mean_std(g.report_acc, 100)} | "
                f"{mean_std(g.finetuned_acc, 100)} | {mean_std(g.flops_fraction, 1, 4)} | {mean_std(g.params, 1e-6, 3)} | "
                f"{mean_std(g.latency_ms, 1)} | {mean_std(g.seconds, 1, 0)} | {mean_std(g.evals, 1, 0)} | {mean_std(g.distinct, 1, 0) if g.distinct.notna().all() else '—'} | "
                f"{mean_std(g.evals_per_min, 1, 1)} |")
        lines += ["", "✓: more than one standard deviation over seeds (the larger of the two methods'); ?: one seed, "
                  "no standard deviation.", ""]
        columns = [("proxy_acc", "proxy acc"), ("report_acc", "test acc"), ("finetuned_acc", "test acc after fine-tune")]
        lines += comparison_table(part, columns)
        lines += ablation_table(part, columns)
    lines += sections
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return lines


def _groups(cells: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[str, Any]]:
    """Budgets and methods in matrix order, and one colour per method (the same in every plot)."""
    import matplotlib

    budgets = list(dict.fromkeys(c["budget"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    cmap = matplotlib.colormaps["tab10"]
    return budgets, methods, {m: cmap(i % 10) for i, m in enumerate(methods)}


def plot_tradeoff(frame: pd.DataFrame, dense: dict[str, Any], path: Path, title: str) -> Path:
    """Test accuracy against FLOPs / dense per method, mean ± std over seeds (before and after fine-tuning)."""
    plt = pyplot()
    panels = [("report_acc", "test accuracy, BN recalibrated (%)")]
    if frame["finetuned_acc"].notna().any():
        panels.append(("finetuned_acc", "test accuracy after fine-tuning (%)"))
    _, methods, colors = _groups(frame.to_dict("records"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        for m in methods:
            g = frame[frame["method"] == m].groupby("budget", sort=False)
            x = g["flops_fraction"].mean()
            y, err = 100 * g[column].mean(), (100 * g[column].std()).fillna(0.0)
            order = np.argsort(x.to_numpy())
            ax.errorbar(x.to_numpy()[order], y.to_numpy()[order], yerr=err.to_numpy()[order], label=m,
                        color=colors[m], marker="o", capsize=3)
        ax.axhline(100 * dense["report_acc"], color="black", linestyle=":", label="dense")
        ax.set_xlabel("FLOPs (MACs) / dense")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path, f"{title}: accuracy against FLOPs (mean ± std over seeds)")


def plot_ratios(cells: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Per-unit pruning ratio of each method's best policy (mean over seeds), one panel per budget."""
    plt = pyplot()
    budgets, methods, colors = _groups(cells)
    units = list(cells[0]["kept"]) if cells else []
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(7.0, 0.35 * len(units) + 3), 3.2 * len(budgets)),
                             squeeze=False, sharex=True)
    for ax, budget in zip(axes[:, 0], budgets):
        for m in methods:
            mine = [c for c in cells if c["budget"] == budget and c["method"] == m]
            if not mine:
                continue
            ratios = np.array([[1.0 - c["kept"][u] / c["channels"][u] for u in units] for c in mine])
            ax.plot(range(len(units)), ratios.mean(axis=0), marker=".", label=m, color=colors[m])
        ax.set_ylabel("pruned ratio")
        ax.set_ylim(-0.02, 1.0)
        ax.set_title(f"{budget}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xticks(range(len(units)), units, rotation=90, fontsize=7)
    axes[0, 0].legend(fontsize=7, ncol=4)
    return save_figure(fig, path, f"{title}: per-unit ratios of each method's best policy (mean over seeds)")


def plot_curves(cells: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Best proxy accuracy within the budget after each evaluation, mean over seeds, one panel per budget."""
    plt = pyplot()
    budgets, methods, colors = _groups(cells)
    fig, axes = plt.subplots(1, len(budgets), figsize=(max(7.0, 5.5 * len(budgets)), 4.2), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        for m in methods:
            curves = [c["curve"] for c in cells if c["budget"] == budget and c["method"] == m]
            if not curves:
                continue
            length = max(len(c) for c in curves)
            padded = np.array([[np.nan if v is None else v for v in c + c[-1:] * (length - len(c))] for c in curves],
                              dtype=float)
            ax.plot(range(1, length + 1), 100 * pd.DataFrame(padded).mean(axis=0), label=m,
                    color=colors[m], marker="o" if length == 1 else None)
        ax.set_xlabel("evaluation")
        ax.set_ylabel("best proxy accuracy within budget (%)")
        ax.set_title(budget, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path, f"{title}: best-so-far proxy accuracy (mean over seeds)")


def findings_section(cell_dir: Path, out: Path) -> list[str]:
    """The report's last section: ``findings.md`` written by hand beside the cells, if there is one."""
    findings = cell_dir / FINDINGS
    if not findings.is_file():
        return []
    where = os.path.relpath(findings, out).replace(os.sep, "/")
    return ["", "## Findings", "", f"_Written by hand in `{where}` from the cells above; a rewrite of this report "
            "keeps it._", "", findings.read_text().strip()]
