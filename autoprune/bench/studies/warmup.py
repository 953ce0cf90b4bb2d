"""Where the rl warm-up cuts: AMC's clipped random actions against random search's projected samples.

Usage::

    AUTOPRUNE_WEIGHTS_DIR=../shared/weights/cifar10 AUTOPRUNE_DATA_DIR=../shared/data \\
        python -m autoprune.bench.studies.warmup --env resnet56-cifar10 --budgets 0.3,0.5,0.7

The rl agents (``ddpg``, ``td3``, ``sac``) start with episodes of uniformly random actions in
[-1, 1], one per unit in network order, each clipped by the environment so that the budget stays
reachable (AMC's resource-constrained search). Random search samples every unit's ratio uniformly in
its bounds and projects the whole sample onto the budget. Both start from the same distribution of
wanted ratios; this benchmark shows where each actually puts the cut. For every budget it draws
``--episodes`` policies of each kind (no network is scored: only the cost model is used) and reports
the mean pruning ratio per block of units (the units' top-level module: ``layer1``, ``layer2``, ...),
the share of units pruned to within 0.05 of their maximum ratio, and the mean FLOPs (MACs) against the
budget; a PNG plots the mean ratio per unit with its spread. Writes ``results/warmup-<env>.md`` and
``results/warmup-<env>.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from autoprune.bench.machine import machine_header, write_markdown
from autoprune.bench.settings import parse_budgets
from autoprune.core.budget import Budget
from autoprune.core.cost import FLOPS_LABEL
from autoprune.core.evaluator import Evaluator
from autoprune.errors import AutopruneError, ConfigError
from autoprune.experiment import build_experiment
from autoprune.plotting import pyplot, save_figure
from autoprune.presets import load_env
from autoprune.search import get_searcher
from autoprune.search.rl.env import ChannelPruningEnv

SAMPLERS = ("rl warm-up (clipped random actions)", "random search (projected samples)")
NEAR_MAX = 0.05  # a unit within this of its max_ratio counts as cut to the maximum


def warmup_policies(evaluator: Evaluator, budget: Budget, episodes: int, seed: int) -> np.ndarray:
    """Ratios (episodes x units) of rl warm-up episodes: uniformly random actions, clipped by the environment."""
    env = ChannelPruningEnv(evaluator, budget=budget)
    rng = np.random.default_rng(seed)
    names = evaluator.space.names
    return np.array([[p[n] for n in names] for p in (env.policy_for(rng.uniform(-1.0, 1.0, len(names)))
                                                     for _ in range(episodes))])


def projected_policies(evaluator: Evaluator, budget: Budget, samples: int, seed: int) -> np.ndarray:
    """Ratios (samples x units) of random search's samples, each projected onto the budget."""
    searcher = get_searcher("random")(evaluator, budget, evals=samples, seed=seed)
    names = evaluator.space.names
    return np.array([[p[n] for n in names] for p, _ in (searcher.propose() for _ in range(samples))])


def blocks(names: list[str]) -> list[str]:
    """Each unit's block: the top-level module its name starts with (``layer2.3.conv1`` -> ``layer2``)."""
    return [n.split(".", 1)[0] for n in names]


def block_rows(evaluator: Evaluator, budget: Budget, ratios: dict[str, np.ndarray]) -> list[str]:
    """Markdown rows: per sampler, the mean ratio per block, the share near the maximum, the mean FLOPs fraction."""
    units = evaluator.space.units
    block_of = np.array(blocks([u.name for u in units]))
    names = list(dict.fromkeys(block_of))
    top = np.array([u.max_ratio for u in units])
    rows = []
    for sampler, table in ratios.items():
        flops = np.mean([evaluator.cost.flops(evaluator.space.kept(dict(zip(evaluator.space.names, r)))) for r in table])
        near = table >= top - NEAR_MAX
        cells = [f"{table[:, block_of == b].mean():.2f} ({near[:, block_of == b].mean():.0%})" for b in names]
        rows.append(f"| {budget} | {sampler} | " + " | ".join(cells) +
                    f" | {flops / evaluator.cost.dense_flops:.3f} |")
    return rows


def plot(names: list[str], results: dict[Budget, dict[str, np.ndarray]], path: Path, title: str) -> Path:
    """Mean ratio per unit (band: 25th to 75th percentile) of each sampler, one panel per budget."""
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(max(7.0, 0.35 * len(names) + 3), 3.0 * len(results)),
                             squeeze=False, sharex=True)
    x = np.arange(len(names))
    for ax, (budget, ratios) in zip(axes[:, 0], results.items()):
        for sampler, table in ratios.items():
            line, = ax.plot(x, table.mean(axis=0), marker=".", label=sampler)
            ax.fill_between(x, *np.percentile(table, [25, 75], axis=0), color=line.get_color(), alpha=0.2)
        ax.set_title(str(budget), fontsize=10)
        ax.set_ylabel("pruned ratio")
        ax.set_ylim(-0.02, 1.0)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xticks(x, names, rotation=90, fontsize=7)
    axes[0, 0].legend(fontsize=8)
    return save_figure(fig, path, f"{title}: where the rl warm-up and random search cut (mean, 25-75%)")


def main(argv: list[str] | None = None) -> int:
    """Draw both kinds of policies at every budget and write the report and its plot."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.warmup")
    parser.add_argument("--env", default="resnet56-cifar10", help="env preset or YAML file")
    parser.add_argument("--budgets", default="0.3,0.5,0.7", help="comma list; bare numbers are FLOPs fractions")
    parser.add_argument("--episodes", type=int, default=300, help="policies of each kind per budget (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results", help="folder of the report (default results)")
    args = parser.parse_args(argv)
    try:
        if args.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
        budgets = [Budget.parse(b) for b in parse_budgets(args.budgets)]
        config = load_env(args.env)
        evaluator = build_experiment(config).evaluator
        results = {b: dict(zip(SAMPLERS, (warmup_policies(evaluator, b, args.episodes, args.seed),
                                          projected_policies(evaluator, b, args.episodes, args.seed))))
                   for b in budgets}
    except AutopruneError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    names = list(evaluator.space.names)
    block_names = list(dict.fromkeys(blocks(names)))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    png = plot(names, results, Path(args.out) / f"warmup-{config.name}.png", config.name)
    lines = [f"# Where the rl warm-up cuts: {config.name}", ""]
    lines += machine_header(["python", "-m", "autoprune.bench.studies.warmup", *argv])
    lines += [
        f"- network {config.model}, search space `{config.search_space}` ({len(names)} units, blocks "
        f"{', '.join(block_names)}); {args.episodes} policies of each kind per budget, seed {args.seed}; no network is "
        f"scored, only priced ({FLOPS_LABEL})",
        "- rl warm-up: one uniformly random action in [-1, 1] per unit, in network order, clipped by the environment "
        "as every episode of `ddpg`, `td3` and `sac` is (AMC's resource-constrained search, tight); random search: each "
        "unit's ratio uniform in its bounds, the whole sample projected onto the budget",
        f"- each cell: mean pruned ratio of the block's units (in brackets: the share of them cut to within "
        f"{NEAR_MAX} of their maximum ratio)",
        "",
        "| budget | policies | " + " | ".join(block_names) + " | FLOPs / dense |",
        "|---|---|" + "---:|" * (len(block_names) + 1),
    ]
    for budget, ratios in results.items():
        lines += block_rows(evaluator, budget, ratios)
    lines += ["", f"![{png.stem}]({png.name})", ""]
    write_markdown(args.out, f"warmup-{config.name}.md", lines, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
