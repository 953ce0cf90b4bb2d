"""Evaluator throughput and overhead, and the uniform policy's accuracy, over seeds.

Usage::

    python -m autoprune.bench.studies.evaluator --env resnet56-cifar10 --budget 0.5flops --evals 20 --seeds 3

Each seed runs random search for ``--evals`` evaluations (different policies per seed) on a fresh
Evaluator and measures evaluations per minute and the share of time outside the proxy's forward
passes. The uniform policy at the budget is scored once for proxy and report (test-half) accuracy.
Writes ``results/evaluator-<env>.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from autoprune.bench.machine import machine_header, write_markdown
from autoprune.bench.stats import mean_std
from autoprune.console import plural
from autoprune.core.budget import Budget
from autoprune.core.cost import FLOPS_LABEL
from autoprune.experiment import build_experiment
from autoprune.presets import load_env
from autoprune.search import get_searcher


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.evaluator")
    parser.add_argument("--env", default="resnet56-cifar10")
    parser.add_argument("--budget", default="0.5flops")
    parser.add_argument("--evals", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)

    budget = Budget.parse(args.budget)
    config = load_env(args.env)
    rows, per_min, overhead = [], [], []
    for seed in range(args.seeds):
        exp = build_experiment(config)
        result = get_searcher("random")(exp.evaluator, budget, evals=args.evals, seed=seed).search()
        fresh = [c for c in result.candidates if not c.cached]
        totals = {k: statistics.mean(c.timings.get(k, 0.0) for c in fresh) for k in ("prune", "recalibrate", "score", "cost", "total")}
        per_min.append(60 * len(result.candidates) / result.seconds)
        overhead.append(exp.evaluator.overhead_fraction)
        rows.append(f"| {seed} | {per_min[-1]:.1f} | {100 * overhead[-1]:.2f}% | {totals['prune']:.3f} | "
                    f"{totals['recalibrate']:.3f} | {totals['score']:.3f} | {1e3 * totals['cost']:.3f} | {totals['total']:.3f} |")

    uniform = get_searcher("uniform")(exp.evaluator, budget, evals=1, seed=0).search().best
    network = exp.evaluator.build(uniform.policy)
    report_acc = exp.accuracy(network, "report")
    dense_flops = exp.evaluator.cost.dense_flops

    lines = [f"# Evaluator speed and the uniform baseline: {args.env}", ""]
    lines += machine_header([sys.executable.rsplit("/", 1)[-1], "-m", "autoprune.bench.studies.evaluator", *(argv or sys.argv[1:])])
    lines += [
        f"- proxy: {len(exp.evaluator.proxy)} images of `{config.splits['proxy']}`, BN recalibration on "
        f"{sum(len(b) for b in exp.evaluator.proxy.calibration)} `{config.splits['calibration']}` images; "
        f"report split `{config.splits['report']}`",
        "",
        f"## Throughput: random search, {plural(args.evals, 'evaluation')} per seed",
        "",
        f"evaluations per minute: **{mean_std(per_min, 1, 3)}**; overhead outside the proxy forward passes: "
        f"**{mean_std(overhead, 100, 3)} %** (mean ± std over {plural(args.seeds, 'seed')})",
        "",
        "| seed | evals/min | overhead | prune s | recalibrate s | score s | cost ms | total s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"## Uniform policy at {budget}",
        "",
        f"{FLOPS_LABEL}: {uniform.flops / 1e6:.3f}M ({uniform.flops / dense_flops:.4f} of dense); "
        f"proxy accuracy **{100 * uniform.proxy_acc:.2f}%**, report accuracy **{100 * report_acc:.2f}%** "
        f"(BN recalibrated, no fine-tuning; the uniform policy is deterministic, so one run).",
        "",
    ]
    write_markdown(args.out, f"evaluator-{args.env}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
