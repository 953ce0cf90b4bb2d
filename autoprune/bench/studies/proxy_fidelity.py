"""Which proxy ranks policies the way fine-tuning does? Policies of one search, their proxies, a short fine-tune.

Usage::

    AUTOPRUNE_WEIGHTS_DIR=../shared/weights/cifar10 AUTOPRUNE_DATA_DIR=../shared/data \\
        python -m autoprune.bench.studies.proxy_fidelity --env resnet20-cifar10 --weights resnet20-12fca82f-jpeg.th \\
        --run runs/random-0.5flops --policies 24 --epochs 2 --seeds 3 --device cuda --jobs 4

Takes ``--policies`` finished, within-budget candidates of a search run (its ``trials.csv``), evenly spaced in the
rank of their proxy accuracy so that they span the range, measures every proxy of
:data:`~autoprune.bench.finetune_cells.PROXIES` for each (BN-recalibrated accuracy on the 1,000 proxy images and on
their first 250, agreement with the dense network, accuracy after reconstruction), fine-tunes each briefly with the
fine-tuning study's recipe under ``--seeds`` fine-tuning seeds, and reports the Spearman rank correlation of each
proxy with the accuracy after fine-tuning (its mean over the seeds, with the p-value and a bootstrap 95% interval;
and the correlation with each seed's accuracy, mean ± std over seeds), and a scatter plot per proxy. Cells are
resumable like the fine-tuning study's, seed by seed (seed 0's cells are named after the trial alone). Writes ``<out>/<env>-proxy-fidelity.md`` and ``-proxy-fidelity.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from autoprune.bench.finetune_cells import (
    PROXIES,
    CellSpec,
    add_study_arguments,
    finished,
    only_cells,
    run_cells,
    run_study,
    study_recipe,
)
from autoprune.bench.machine import machine_header, write_markdown
from autoprune.bench.stats import mean_std
from autoprune.bench.studies.finetune import check_identity
from autoprune.errors import ConfigError
from autoprune.finetune.trainer import FinetuneSettings
from autoprune.plotting import pyplot, save_figure
from autoprune.presets import load_env

PROXY_LABELS = {"proxy_acc": "accuracy, 1,000 proxy images (the search's)", "proxy_acc_250": "accuracy, first 250",
                "agreement": "agreement with the dense network", "reconstruct_acc": "accuracy after reconstruction"}


def pick_policies(trials: pd.DataFrame, count: int) -> pd.DataFrame:
    """``count`` finished, within-budget, distinct trials evenly spaced in the rank of their proxy accuracy (the
    worst and the best included).

    Raises:
        ConfigError: if the run has fewer such trials.
    """
    ok = trials[(trials["status"] == "ok") & (trials["within_budget"].astype(str) == "True")]
    kept = [c for c in trials.columns if c.startswith("kept:")]
    ok = ok.drop_duplicates(subset=kept).sort_values("proxy_acc", kind="stable").reset_index(drop=True)
    if len(ok) < count:
        raise ConfigError(f"the run has {len(ok)} distinct finished candidates within the budget, fewer than "
                          f"--policies {count}; pass a run with more evaluations or fewer --policies")
    rows = np.unique(np.linspace(0, len(ok) - 1, count).round().astype(int))
    return ok.iloc[rows].reset_index(drop=True)


def fidelity_cells(picked: pd.DataFrame, recipe: FinetuneSettings, seeds: int = 1) -> list[CellSpec]:
    """One cell per picked trial and fine-tuning seed, seed by seed (named after the trial, ``-s<seed>`` added from
    seed 1 on), proxies measured before the fine-tune."""
    kept = [c for c in picked.columns if c.startswith("kept:")]
    return [CellSpec(f"trial-{int(row['trial']):04d}" + (f"-s{seed}" if seed else ""),
                     {c.partition(":")[2]: int(row[c]) for c in kept}, replace(recipe, seed=seed),
                     {"trial": int(row["trial"]), "seed": seed, "search_proxy_acc": float(row["proxy_acc"])}, proxies=True)
            for seed in range(seeds) for _, row in picked.iterrows()]


def merge_seeds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per trial: its proxies (measured before fine-tuning, the same for every seed) and
    ``report_acc``, the mean over its finished seeds (``seed_accs``: each seed's)."""
    by_trial: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_trial[r["trial"]].append(r)
    return [{**group[0], "report_acc": statistics.mean(r["report_acc"] for r in group),
             "seed_accs": [r["report_acc"] for r in group]} for group in by_trial.values()]


def per_seed_correlations(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per proxy: Spearman's rho with each fine-tuning seed's accuracy, for the seeds with 3 or more finished
    trials."""
    by_seed: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_seed[r.get("seed", 0)].append(r)
    return {proxy: [float(stats.spearmanr([r[proxy] for r in group], [r["report_acc"] for r in group])[0])
                    for _, group in sorted(by_seed.items()) if len(group) >= 3]
            for proxy in PROXIES}


def rank_correlations(records: list[dict[str, Any]], target: str = "report_acc", resamples: int = 2000,
                      seed: int = 0) -> pd.DataFrame:
    """Per proxy: Spearman's rho with ``target`` over the records, its p-value and a bootstrap 95% interval; and
    the 95% interval of the best proxy's lead over it (``lead_low``, ``lead_high``; 0 for the best itself), from the
    same resamples of the records (a paired bootstrap), so a lead whose interval holds 0 is not resolved."""
    y = np.array([r[target] for r in records])
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(y), len(y)) for _ in range(resamples)]
    rows, boots = [], {}
    for proxy in PROXIES:
        x = np.array([r[proxy] for r in records])
        rho, p = stats.spearmanr(x, y)
        boots[proxy] = np.array([stats.spearmanr(x[d], y[d])[0] if len(set(x[d])) > 1 and len(set(y[d])) > 1
                                 else np.nan for d in draws])
        low, high = np.nanpercentile(boots[proxy], [2.5, 97.5])
        rows.append({"proxy": proxy, "rho": float(rho), "p": float(p), "low": float(low), "high": float(high)})
    table = pd.DataFrame(rows)
    best = table.loc[table["rho"].idxmax(), "proxy"]
    leads = [np.nanpercentile(boots[best] - boots[proxy], [2.5, 97.5]) if proxy != best else (0.0, 0.0)
             for proxy in table["proxy"]]
    table["lead_low"], table["lead_high"] = [float(a) for a, _ in leads], [float(b) for _, b in leads]
    return table


def answer(table: pd.DataFrame, epochs: int, policies: int) -> str:
    """The one-sentence answer: which proxy ranks policies best, and whether its lead is resolved."""
    best = table.loc[table["rho"].idxmax()]
    unresolved = [PROXY_LABELS[r["proxy"]] for _, r in table.iterrows() if r["proxy"] != best["proxy"] and r["lead_low"] <= 0]
    verdict = (f"its lead over {', '.join(unresolved)} is not resolved by {policies} policies (the paired bootstrap "
               f"interval of the difference holds 0)" if unresolved else
               "its lead over every other proxy is resolved (paired bootstrap intervals above 0)")
    return (f"**Answer:** {PROXY_LABELS[best['proxy']]} ranks policies best (Spearman {best['rho']:.3f} with accuracy "
            f"after {epochs} epochs of fine-tuning, over {policies} policies); {verdict}.")


def plot_scatter(records: list[dict[str, Any]], table: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per proxy: the proxy against accuracy after the short fine-tune."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PROXIES), figsize=(4.2 * len(PROXIES), 4), squeeze=False)
    y = [100 * r["report_acc"] for r in records]
    for ax, (_, row) in zip(axes[0], table.iterrows()):
        ax.scatter([100 * r[row["proxy"]] for r in records], y, s=18)
        ax.set_xlabel(f"{PROXY_LABELS[row['proxy']]} (%)", fontsize=8)
        ax.set_title(f"Spearman {row['rho']:.3f}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("report accuracy after fine-tuning (%)")
    return save_figure(fig, path, title)


def main(argv: list[str] | None = None) -> int:
    """Run the study's missing cells (unless ``--report-only``) and write its report."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.proxy_fidelity")
    parser.add_argument("--env", default="resnet20-cifar10")
    parser.add_argument("--weights", default="resnet20-12fca82f-jpeg.th")
    parser.add_argument("--run", required=True, help="a search run directory (its trials.csv)")
    parser.add_argument("--policies", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per policy (default 3)")
    parser.add_argument("--cells", help="folder of the study's cells (default results/benchmarks/cells/<env>-proxy-fidelity)")
    add_study_arguments(parser, epochs=2)
    return run_study(_run, parser.parse_args(argv), argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    config = load_env(args.env)
    config.weights = args.weights
    trials_csv = Path(args.run) / "trials.csv"
    if not trials_csv.is_file():
        raise ConfigError(f"--run {args.run!r} has no trials.csv; pass the folder of a finished `autoprune search`")
    if args.policies < 3:
        raise ConfigError(f"--policies must be >= 3 for a rank correlation, got {args.policies}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    recipe = study_recipe(args)
    cells = Path(args.cells or f"results/benchmarks/cells/{args.env}-proxy-fidelity")
    check_identity(cells, {"env": args.env, "weights": args.weights, "run": Path(args.run).name,
                           "policies": args.policies, "recipe": asdict(recipe)})
    specs = fidelity_cells(pick_policies(pd.read_csv(trials_csv), args.policies), recipe, args.seeds)
    if not args.report_only:
        run_cells(config, only_cells(specs, args.only), cells, args.device, args.jobs, args.stop_after, not args.quiet,
                  "proxy-fidelity study")
    cell_records = finished(cells, specs)
    records = merge_seeds(cell_records)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if len(records) < 3:
        raise ConfigError(f"{len(records)} policies have finished cells in {cells}; a rank correlation needs 3 or more")
    table = rank_correlations(records)
    per_seed = per_seed_correlations(cell_records)
    seeds_done = sorted({r.get("seed", 0) for r in cell_records})
    spread = [statistics.stdev(r["seed_accs"]) for r in records if len(r["seed_accs"]) > 1]
    name = f"{args.env}-proxy-fidelity"
    plot = plot_scatter(records, table, Path(args.out) / f"{name}.png",
                        f"{config.model}: proxies against accuracy after {args.epochs} epochs of fine-tuning")
    acc = [100 * r["report_acc"] for r in records]
    lines = [f"# Which proxy ranks policies best? {config.model} on {config.dataset}", ""]
    lines += machine_header([Path(sys.executable).name, "-m", "autoprune.bench.studies.proxy_fidelity", *(argv or sys.argv[1:])])
    lines += [
        f"- cells measured on: {'; '.join(sorted({c['machine'] for c in cell_records}))}",
        f"- {len(records)} of {args.policies} policies, {len(cell_records)} of {len(specs)} cells: candidates of the search `{Path(args.run).name}` (finished, within "
        f"budget, distinct), evenly spaced in the rank of their proxy accuracy "
        f"({100 * min(r['proxy_acc'] for r in records):.1f}% to {100 * max(r['proxy_acc'] for r in records):.1f}%)",
        f"- each fine-tuned {args.epochs} epochs (SGD lr {recipe.lr} cosine, momentum {recipe.momentum}, weight decay "
        f"{recipe.weight_decay}, batch {recipe.batch_size}, crop and flip, "
        f"{f'{recipe.train_images} train images' if recipe.train_images else 'whole train split'}), then scored on the "
        f"report split; fine-tuning seeds {', '.join(map(str, seeds_done))}; accuracy after fine-tuning, mean over "
        f"each policy's seeds: {min(acc):.2f}% to {max(acc):.2f}%"
        + (f"; its std across seeds, mean over policies: {100 * statistics.mean(spread):.2f} points" if spread else ""),
        "",
        "| proxy | Spearman rho with accuracy after fine-tuning (mean over seeds) | 95% bootstrap interval | p | "
        "best proxy's lead, 95% interval | rho with each seed's accuracy, mean ± std (seeds) |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {PROXY_LABELS[r['proxy']]} | {r['rho']:.3f} | {r['low']:.3f} to {r['high']:.3f} | {r['p']:.2g} | "
          + ("best" if r["lead_high"] == r["lead_low"] == 0 else f"{r['lead_low']:+.3f} to {r['lead_high']:+.3f}")
          + f" | {mean_std(per_seed[r['proxy']], 1, 3)} ({len(per_seed[r['proxy']])}) |"
          for _, r in table.iterrows()),
        "",
        answer(table, args.epochs, len(records)),
        "",
        f"![proxies against accuracy after fine-tuning]({plot.name})",
        "",
    ]
    write_markdown(args.out, f"{name}.md", lines, echo=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
