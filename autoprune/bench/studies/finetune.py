"""Does the search survive fine-tuning? The final policies of a benchmark's search cells, fine-tuned for real.

Usage::

    AUTOPRUNE_WEIGHTS_DIR=../shared/weights/cifar10 AUTOPRUNE_DATA_DIR=../shared/data \\
        python -m autoprune.bench.studies.finetune --env resnet20-cifar10 --weights resnet20-12fca82f-jpeg.th \\
        --budget 0.5flops --methods uniform,random,sensitivity,optuna-cmaes,sac,evolution --epochs 15 --device cuda --jobs 12

For every method the policy of each search seed (``<search-cells>/<budget>/<method>-e<evals>-s<seed>.json``; a
deterministic method's one policy for every seed) is rebuilt from the dense weights, BatchNorm-recalibrated, and
fine-tuned with one recipe (SGD with momentum, cosine schedule, crop and flip, on the whole train split) with and
without knowledge distillation from the dense network, fine-tuning seed = search seed. The control is the dense
network given the same fine-tuning: what extra training on this data gives a network that was not pruned. Each
cell is one JSON file under ``<cells>``, so a stopped study resumes (and several processes or machines can fill
it). Writes ``<out>/<env>-finetune.md`` (accuracy before and after, gaps with Welch's t-test, wall time) and
``<out>/<env>-finetune-curves.png`` (accuracy against epoch).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from scipy import stats

from autoprune.bench.finetune_cells import (
    CellSpec,
    add_study_arguments,
    finished,
    only_cells,
    run_cells,
    run_study,
    study_recipe,
)
from autoprune.bench.machine import machine_header, write_markdown
from autoprune.bench.report import findings_section
from autoprune.bench.settings import parse_method, parse_methods
from autoprune.bench.stats import mean_std
from autoprune.core.budget import Budget
from autoprune.errors import ConfigError
from autoprune.finetune.trainer import FinetuneSettings
from autoprune.io import atomic_write_text
from autoprune.plotting import pyplot, save_figure
from autoprune.presets import load_env
from autoprune.search import get_searcher, methods_where

CONTROL = "dense"
LOSSES = {False: "ce", True: "kd"}
"""Cell-name tag of fine-tuning without (cross-entropy) and with knowledge distillation."""


def policy_sources(search_cells: Path, budget: str, methods: list[str], evals: int, seeds: list[int]) -> dict[tuple[str, int], Path]:
    """The search cell whose final policy each (method, seed) fine-tunes: a deterministic method's one cell for
    every seed.

    Raises:
        ConfigError: naming the search cells that are missing.
    """
    sources, missing = {}, []
    for method in methods:
        deterministic = get_searcher(parse_method(method)[0]).deterministic
        for seed in seeds:
            path = search_cells / budget / f"{method}-e{evals}-s{0 if deterministic else seed}.json"
            if path.is_file():
                sources[(method, seed)] = path
            else:
                missing.append(path.name)
    if missing:
        raise ConfigError(f"no search cell {', '.join(dict.fromkeys(missing))} in {search_cells / budget}; run "
                          f"`autoprune bench` for those methods first, or leave them out of --methods")
    return sources


def study_cells(sources: dict[tuple[str, int], Path], dense_kept: dict[str, int], recipe: FinetuneSettings,
                seeds: list[int], distill: list[bool]) -> list[CellSpec]:
    """The study's cells, seed by seed (an interrupted study has every method at its first seed), the dense
    control first."""
    methods = list(dict.fromkeys(m for m, _ in sources))
    specs = []
    for seed in seeds:
        for kd in distill:
            settings = replace(recipe, seed=seed, distill=kd)
            specs.append(CellSpec(f"{CONTROL}-{LOSSES[kd]}-s{seed}", dense_kept, settings,
                                  {"method": CONTROL, "seed": seed, "distill": kd}))
            for method in methods:
                source = json.loads(sources[(method, seed)].read_text())
                specs.append(CellSpec(f"{method}-{LOSSES[kd]}-s{seed}", source["kept"], settings, {
                    "method": method, "seed": seed, "distill": kd, "source": sources[(method, seed)].name,
                    "search_proxy_acc": source["proxy_acc"], "search_report_acc": source["report_acc"]}))
    return specs


def check_identity(cells: Path, identity: dict[str, Any]) -> None:
    """Record the study's settings beside its cells, or check them against the recorded ones.

    Raises:
        ConfigError: if the cells were made with other settings.
    """
    path = cells / "study.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [f"{k}={saved.get(k)!r} there, {v!r} now" for k, v in identity.items() if saved.get(k) != v]
        if changed:
            raise ConfigError(f"the cells in {cells} were made with other settings ({'; '.join(changed)}); "
                              f"pass another --cells")
    else:
        cells.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(identity, indent=1) + "\n")




def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """The difference of means in points and Welch's two-sided t-test p-value (NaN with fewer than two values on a
    side or no spread)."""
    diff = 100 * (statistics.mean(a) - statistics.mean(b))
    if len(a) < 2 or len(b) < 2 or statistics.pstdev(a) + statistics.pstdev(b) == 0:
        return diff, float("nan")
    return diff, float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def gap(a: list[float], b: list[float]) -> str:
    """``+1.23 (p = 0.012)``: :func:`welch` as a table cell (``p = n/a`` where it has no p-value)."""
    diff, p = welch(a, b)
    return f"{diff:+.2f} (p = {'n/a' if math.isnan(p) else f'{p:.3f}'})"


def report_lines(records: list[dict[str, Any]], methods: list[str], distill: list[bool]) -> list[str]:
    """The report's tables and answers (everything after the header)."""
    def values(method: str, kd: bool, key: str) -> list[float]:
        return [r[key] for r in records if r["method"] == method and r["distill"] == kd]

    lines = ["## Accuracy on the report split (5,000 test images the searches never saw), mean ± std over seeds", "",
             "| method | FLOPs | before fine-tuning | " + " | ".join(
                 f"after, {'distillation' if kd else 'cross-entropy'}" for kd in distill) + " | seeds"
             + (" (" + " / ".join("distillation" if kd else "cross-entropy" for kd in distill) + ")" if len(distill) > 1
                else "") + " | minutes per cell |",
             "|---|---:|---:|" + "---:|" * len(distill) + "---:|---:|"]
    for method in [CONTROL, *methods]:
        rows = [r for r in records if r["method"] == method]
        if not rows:
            continue
        flops = rows[0]["flops"] / rows[0]["dense_flops"]
        first = [r for r in rows if r["distill"] == distill[0]] or rows  # before: the same network for either loss
        before = [r["before_report_acc"] for r in first]
        after = [mean_std(values(method, kd, "report_acc")) for kd in distill]
        seeds = " / ".join(str(len(values(method, kd, "report_acc"))) for kd in distill)
        minutes = statistics.mean(r["seconds"] for r in rows) / 60
        lines.append(f"| {method} | {flops:.3f} | {mean_std(before)} | " + " | ".join(after) +
                     f" | {seeds} | {minutes:.1f} |")
    lines += ["", f"The {CONTROL} row is the control: the unpruned network given the same fine-tuning; its gain is "
              "what extra training on this data gives without pruning.", ""]
    lines += ["## Gaps after fine-tuning (points; Welch's t-test over seeds)", ""]
    for kd in distill:
        searched = [m for m in methods if m not in methods_where("baseline") and values(m, kd, "report_acc")]
        if not searched:
            continue
        best, ahead = best_searched(searched, kd, values)
        label = "with distillation" if kd else "cross-entropy"
        lines += [f"### {label}", "", "| method | " + " | ".join(f"− {b}" for b in methods_where("baseline"))
                  + " | − dense control |", "|---|" + "---:|" * (len(methods_where("baseline")) + 1)]
        for method in methods:
            mine = values(method, kd, "report_acc")
            if not mine:
                continue
            cells = [gap(mine, values(b, kd, "report_acc")) if values(b, kd, "report_acc") else "—"
                     for b in (*methods_where("baseline"), CONTROL)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", answer(best, kd, values, ahead), ""]
    return lines


def best_searched(searched: list[str], kd: bool, values: Any) -> tuple[str, list[str]]:
    """The searched method with the highest mean accuracy after fine-tuning among those with the most finished
    seeds, and the methods with fewer seeds whose mean reads higher (an unfinished study's tentative leaders)."""
    def mean(m: str) -> float:
        return statistics.mean(values(m, kd, "report_acc"))

    most = max(len(values(m, kd, "report_acc")) for m in searched)
    best = max((m for m in searched if len(values(m, kd, "report_acc")) == most), key=mean)
    return best, [m for m in searched if len(values(m, kd, "report_acc")) < most and mean(m) > mean(best)]


def answer(best: str, kd: bool, values: Any, ahead: Sequence[str] = ()) -> str:
    """The one-sentence answer: does the best searched policy still beat uniform and random after fine-tuning?
    ``ahead``: methods with fewer seeds that read higher, named as not yet comparable."""
    mine = values(best, kd, "report_acc")
    parts = []
    for base in methods_where("baseline"):
        other = values(base, kd, "report_acc")
        if not other:
            continue
        diff, p = welch(mine, other)
        verdict = "beats" if diff > 0 else "does not beat"
        test = ("p = n/a: fewer than two seeds or no spread" if math.isnan(p) else
                f"p = {p:.3f}, {'significant' if p < 0.05 else 'not significant'} at 5%")
        parts.append(f"{verdict} {base} by {diff:+.2f} points ({test})")
    loss = "with distillation" if kd else "with cross-entropy"
    seeds = f"among the methods with {len(mine)} seeds" if ahead else ""
    pending = "; ".join(f"{m} reads {100 * statistics.mean(values(m, kd, 'report_acc')):.2f}% on "
                        f"{len(values(m, kd, 'report_acc'))} seed(s), not yet comparable" for m in ahead)
    return (f"**Answer ({loss}):** the best searched policy after fine-tuning{' ' + seeds if seeds else ''}, {best}, "
            + " and ".join(parts) + (f" ({pending})" if pending else "") + ".")


def plot_curves(records: list[dict[str, Any]], methods: list[str], distill: list[bool], path: Path, title: str) -> Path:
    """Report-split accuracy against epoch, mean over seeds, one panel per loss."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(distill), figsize=(6 * len(distill), 4.5), squeeze=False)
    for ax, kd in zip(axes[0], distill):
        for method in [CONTROL, *methods]:
            rows = [r for r in records if r["method"] == method and r["distill"] == kd and r["epochs"]]
            if not rows:
                continue
            epochs = min(len(r["epochs"]) for r in rows)
            mean = [100 * statistics.mean([r["before_report_acc"] for r in rows])]
            mean += [100 * statistics.mean(r["epochs"][e]["report_acc"] for r in rows) for e in range(epochs)]
            ax.plot(range(epochs + 1), mean, marker=".", label=method, linestyle="--" if method == CONTROL else "-")
        ax.set_xlabel("epoch (0: BN-recalibrated, before fine-tuning)")
        ax.set_ylabel("report-split accuracy (%)")
        ax.set_title("with distillation" if kd else "cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def main(argv: list[str] | None = None) -> int:
    """Run the study's missing cells (unless ``--report-only``) and write its report."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.finetune")
    parser.add_argument("--env", default="resnet20-cifar10")
    parser.add_argument("--weights", default="resnet20-12fca82f-jpeg.th")
    parser.add_argument("--budget", default="0.5flops")
    parser.add_argument("--methods", default="uniform,random,sensitivity,optuna-cmaes,sac,evolution",
                        help="search methods whose final policies are fine-tuned (bench cell names)")
    parser.add_argument("--search-cells", help="the benchmark's cell folder (default results/benchmarks/cells/<env>)")
    parser.add_argument("--evals", type=int, default=300, help="evaluations of the search cells (their e<N>)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--distill", choices=("both", "on", "off"), default="both")
    parser.add_argument("--cells", help="folder of the study's cells (default results/benchmarks/cells/<env>-finetune)")
    add_study_arguments(parser, epochs=15)
    return run_study(_run, parser.parse_args(argv), argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    budget = str(Budget.parse(args.budget))
    config = load_env(args.env)
    config.weights = args.weights
    methods = list(parse_methods(args.methods))
    seeds = list(range(args.seeds))
    distill = {"both": [False, True], "on": [True], "off": [False]}[args.distill]
    recipe = study_recipe(args)
    search_cells = Path(args.search_cells or f"results/benchmarks/cells/{args.env}")
    cells = Path(args.cells or f"results/benchmarks/cells/{args.env}-finetune")
    identity = {"env": args.env, "weights": args.weights, "budget": budget, "evals": args.evals,
                "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("seed", "distill")}}
    check_identity(cells, identity)
    sources = policy_sources(search_cells, budget, methods, args.evals, seeds)
    dense_kept = json.loads(next(iter(sources.values())).read_text())["channels"]
    specs = study_cells(sources, dense_kept, recipe, seeds, distill)
    if not args.report_only:
        run_cells(config, only_cells(specs, args.only), cells, args.device, args.jobs, args.stop_after, not args.quiet,
                  "fine-tuning study")
    records = finished(cells, specs)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not records:
        raise ConfigError(f"no finished cells in {cells}; run without --report-only first")
    name = f"{args.env}-finetune"
    r = recipe
    lines = [f"# Does the search survive fine-tuning? {config.model} on {config.dataset} at {budget}", ""]
    lines += machine_header([Path(sys.executable).name, "-m", "autoprune.bench.studies.finetune", *(argv or sys.argv[1:])])
    lines += [
        f"- cells measured on: {'; '.join(sorted({c['machine'] for c in records}))} (device "
        f"{', '.join(sorted({c['device'] for c in records}))})",
        f"- {len(records)} of {len(specs)} cells finished; policies: the final policy of each search cell in "
        f"`{search_cells / budget}` ({args.evals} evaluations, search seed = fine-tuning seed; deterministic methods: "
        f"one policy, every seed)",
        f"- recipe: {r.epochs} epochs on "
        + (f"{r.train_images} images of" if r.train_images else "the whole")
        + f" `{config.splits['calibration']}` split, SGD lr {r.lr} (cosine to 0), "
        f"momentum {r.momentum}, weight decay {r.weight_decay}, batch {r.batch_size}, random crop (pad 4) and flip; "
        f"distillation: T = {r.temperature}, weight {r.distill_weight} on the soft targets; BN recalibrated on the "
        f"proxy's calibration batches before fine-tuning",
        f"- total fine-tuning time: {sum(c['seconds'] for c in records) / 60:.1f} minutes over {len(records)} cells",
    ]
    kd = [c for c in records if c["settings"]["distill"]]
    if kd:
        reading = sum(1 for c in kd if c.get("teacher_batches_read", 0))
        lines.append(f"- distillation cells: the dense teacher's logits of each (seed, epoch) are computed by the first "
                     f"cell that trains that epoch and read back by the others of the seed (their batches are "
                     f"identical; `autoprune/finetune/teacher.py`); {reading} of {len(kd)} cells read some back, "
                     f"which makes them faster, not different")
    lines += [""]
    lines += report_lines(records, methods, distill)
    plot = plot_curves(records, methods, distill, Path(args.out) / f"{name}-curves.png",
                       f"{config.model} {budget}: accuracy during fine-tuning")
    lines += [f"![accuracy against epoch]({plot.name})", *findings_section(cells, Path(args.out)), ""]
    write_markdown(args.out, f"{name}.md", lines, echo=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
