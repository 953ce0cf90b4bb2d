"""Compare search methods on one env and budget with the same Evaluator and evaluation count.

Usage::

    python -m autoprune.benchmarks.compare --env resnet20-cifar10 --budget 0.5flops \\
        --methods uniform,random,optuna-tpe,ddpg --evals 300 --seeds 3

Each (method, seed) cell runs on a fresh Evaluator (no shared cache) and is saved as JSON under
``results/benchmarks/cells/`` as soon as it finishes; a rerun skips finished cells. The report
(``results/benchmarks/<env>-<budget>.md`` and a PNG of best-so-far curves) gives mean ± std over seeds
of the best policy's proxy accuracy and its accuracy on the report split (BN recalibrated, no
fine-tuning), FLOPs (MACs) and search cost. The dense network is scored exactly like a candidate.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from autoprune.benchmarks.machine import machine_header
from autoprune.budget import Budget
from autoprune.cost import FLOPS_LABEL
from autoprune.experiment import DataOptions, Experiment
from autoprune.presets import load_env
from autoprune.search import get_searcher



def method_spec(spec: str, evals: int) -> tuple[str, dict[str, Any]]:
    """``optuna-tpe`` -> (``optuna``, {"sampler": "tpe"}); rl methods get a warm-up that fits ``evals``."""
    if spec.startswith("optuna-"):
        return "optuna", {"sampler": spec.removeprefix("optuna-")}
    if spec in ("ddpg", "td3", "sac"):
        return spec, {"warmup": min(100, evals // 3)}  # AMC's 100 warm-up episodes, or a third of a short run
    return spec, {}


def run_cell(config_name: str, weights: str | None, budget: Budget, spec: str, evals: int, seed: int) -> dict[str, Any]:
    """Search once and score the best policy; returns the cell's record."""
    config = load_env(config_name)
    if weights:
        config.weights = weights
    exp = Experiment.from_config(config, DataOptions())
    method, options = method_spec(spec, evals)
    searcher = get_searcher(method)(exp.evaluator, budget, evals=evals, seed=seed, **options)
    start = time.perf_counter()
    result = searcher.search()
    seconds = time.perf_counter() - start
    best = result.best
    running, curve = None, []
    for c in result.candidates:
        if c.ok and c.meta.get("within_budget") and (running is None or c.proxy_acc > running):
            running = c.proxy_acc
        curve.append(running)
    return {
        "method": spec, "seed": seed, "budget": str(budget), "evals": result.evaluations, "seconds": seconds,
        "proxy_acc": best.proxy_acc, "report_acc": exp.accuracy(exp.evaluator.build(best.policy), "report"),
        "flops": best.flops, "params": best.params, "dense_flops": exp.evaluator.cost.dense_flops,
        "kept": best.kept, "curve": curve,
    }


def dense_baseline(config_name: str, weights: str | None) -> dict[str, float]:
    """Proxy and report accuracy of the dense network, with the same BN recalibration as a candidate."""
    config = load_env(config_name)
    if weights:
        config.weights = weights
    exp = Experiment.from_config(config, DataOptions())
    return {"proxy_acc": exp.evaluator.proxy.score(copy.deepcopy(exp.model)).accuracy,
            "report_acc": exp.accuracy(copy.deepcopy(exp.model), "report"), "flops": exp.evaluator.cost.dense_flops}


def _ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def write_report(path: Path, cells: list[dict[str, Any]], dense: dict[str, float], args: argparse.Namespace,
                 argv: list[str]) -> None:
    """Markdown table of mean ± std per method, and a PNG of mean best-so-far proxy accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in args.methods.split(",") if any(c["method"] == m for c in cells)]
    lines = [f"# Search methods on {args.env} at {args.budget}", ""]
    lines += machine_header(["python", "-m", "autoprune.benchmarks.compare", *argv])
    lines += [
        f"- weights: `{args.weights or load_env(args.env).weights}`; every method uses the same Evaluator "
        f"(proxy split, BN recalibration, {FLOPS_LABEL}), the same budget and {args.evals} evaluations per seed",
        f"- dense network, scored like a candidate: proxy {100 * dense['proxy_acc']:.2f}%, report "
        f"{100 * dense['report_acc']:.2f}%, {dense['flops'] / 1e6:.2f}M FLOPs (MACs)",
        "",
        "| method | seeds | best proxy acc (%) | report acc of best (%) | FLOPs / dense | evals | search s | evals/min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        mine = [c for c in cells if c["method"] == m]
        lines.append(
            f"| {m} | {len(mine)} | {_ms([c['proxy_acc'] for c in mine], 100)} | {_ms([c['report_acc'] for c in mine], 100)} | "
            f"{_ms([c['flops'] / c['dense_flops'] for c in mine], 1, 4)} | {_ms([c['evals'] for c in mine], 1, 0)} | "
            f"{_ms([c['seconds'] for c in mine], 1, 0)} | {_ms([60 * c['evals'] / c['seconds'] for c in mine], 1, 1)} |"
        )
        length = max(len(c["curve"]) for c in mine)
        mean_curve = []
        for i in range(length):
            values = [c["curve"][min(i, len(c["curve"]) - 1)] for c in mine if c["curve"][min(i, len(c["curve"]) - 1)] is not None]
            mean_curve.append(100 * statistics.mean(values) if values else float("nan"))
        ax.plot(range(1, length + 1), mean_curve, label=m, marker="o" if length == 1 else None)
    ax.set_xlabel("evaluation")
    ax.set_ylabel(f"best proxy accuracy within budget (%), mean of {args.seeds} seeds")
    ax.legend()
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    lines += ["", f"![best-so-far proxy accuracy]({png.name})", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run every missing cell, then write the report."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m autoprune.benchmarks.compare")
    parser.add_argument("--env", default="resnet20-cifar10")
    parser.add_argument("--weights", help="override the preset's checkpoint")
    parser.add_argument("--budget", default="0.5flops")
    parser.add_argument("--methods", default="uniform,random,optuna-tpe")
    parser.add_argument("--evals", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="results/benchmarks")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished cells only")
    args = parser.parse_args(argv)
    budget = Budget.parse(args.budget)
    tag = f"{args.env}-{budget}" + (f"-{Path(args.weights).stem}" if args.weights else "")
    cell_dir = Path(args.out) / "cells" / tag
    cell_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for spec in args.methods.split(","):
        for seed in range(1 if spec == "uniform" else args.seeds):
            path = cell_dir / f"{spec}-e{args.evals}-s{seed}.json"
            if not path.is_file() and args.report_only:
                continue
            if not path.is_file():
                cell = run_cell(args.env, args.weights, budget, spec, args.evals, seed)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cell))
                tmp.replace(path)
                print(f"{spec} seed {seed}: proxy {100 * cell['proxy_acc']:.2f}% report {100 * cell['report_acc']:.2f}% "
                      f"in {cell['seconds']:.0f} s", flush=True)
            cells.append(json.loads(path.read_text()))
    report = Path(args.out) / f"{tag}.md"
    write_report(report, cells, dense_baseline(args.env, args.weights), args, argv)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
