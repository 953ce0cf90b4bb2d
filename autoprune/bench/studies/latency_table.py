"""Latency lookup table against measured latency, for policies at fractions of the dense latency.

Usage::

    python -m autoprune.bench.studies.latency_table --env resnet20-cifar10
    python -m autoprune.bench.studies.latency_table --env resnet56-cifar10 --spaces cifar-resnet,all-convs --max-ratio 0.9

For every search space it builds the table (timing it), then, for each fraction of the dense latency,
projects a uniform shape and ``--policies - 1`` random shapes (seeded) onto that fraction with the
table, builds each pruned network and measures it alternately with the dense network (so that load
from other processes on the machine affects both alike; median of ``--repeats`` passes each). The
table is rebased on the dense latency of that window, as a search rebases it on the dense latency it
measures, and the report gives predicted against measured latency. A fraction the space cannot reach
is reported as such. Only the architecture is needed (no weights, no
data). Writes ``results/latency-table-<env>.md`` (``-batch<N>`` appended for a batch above 1).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from autoprune.bench.machine import machine_header, write_markdown
from autoprune.console import plural
from autoprune.core.cost import LatencySettings, resolve_device
from autoprune.core.latency_table import LatencyTable, paired_latency
from autoprune.core.projection import check_reachable, project
from autoprune.core.prune import Pruner
from autoprune.core.space import SearchSpace
from autoprune.errors import AutopruneError, BudgetError
from autoprune.presets import load_env, load_space
from autoprune.zoo.models import build_model


def run_space(model: torch.nn.Module, x: torch.Tensor, space_name: str, max_ratio: float | None,
              fractions: list[float], policies: int, settings: LatencySettings) -> tuple[list[str], list[float]]:
    """Build one space's table and compare it with measurements; returns report lines and relative errors."""
    config = load_space(space_name)
    if max_ratio is not None:
        config = replace(config, max_ratio=max_ratio, rules=tuple(replace(r, max_ratio=None) for r in config.rules))
    space = SearchSpace.from_model(model, x, config)
    pruner = Pruner(model, x, space)
    start = time.perf_counter()
    table = LatencyTable.build(model, x, space, settings, pruner.prune)
    build_s = time.perf_counter() - start
    floor = table.predict({u.name: u.min_kept for u in space.units}) / table.dense_ms
    lines = [
        f"## Space `{space_name}`" + (f" with max_ratio {max_ratio}" if max_ratio is not None else ""), "",
        f"- {len(space)} units, {table.entries} (unit, kept) entries, {len(table.interactions)} shared-layer interactions; "
        f"built in {build_s:.1f} s; dense latency {table.reference_ms:.3f} ms; calibration scale {table.scale:.3f} "
        f"(predicted / measured ms of the calibration networks: "
        f"{', '.join(f'{p:.3f}/{m:.3f}' for p, m in table.calibration)})",
        f"- predicted latency with every unit at its max_ratio: {floor:.3f} of dense",
        "",
        "| target (of dense) | policy | dense ms | predicted ms | measured ms | error | measured / dense |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    rng = np.random.default_rng(0)
    errors = []
    dense = copy.deepcopy(model)
    for fraction in fractions:
        try:
            check_reachable(space, table.predict, fraction * table.dense_ms, f"{fraction:g}latency")
        except BudgetError:
            lines.append(f"| {fraction:g} | unreachable: the table predicts {floor:.3f} of dense at every max_ratio | | | | | |")
            continue
        for i in range(policies):
            shape = {u.name: 0.0 if i == 0 else float(rng.uniform(u.min_ratio, u.max_ratio)) for u in space.units}
            kept = space.kept(project(shape, space, table.predict, fraction * table.dense_ms, fill=False))
            measured, dense_ms = paired_latency(pruner.prune(kept), dense, x, settings)
            predicted = table.rebased(dense_ms).predict(kept)
            errors.append(predicted / measured - 1)
            lines.append(f"| {fraction:g} | {'uniform' if i == 0 else f'random {i}'} | {dense_ms:.3f} | {predicted:.3f} | "
                         f"{measured:.3f} | {100 * errors[-1]:+.1f}% | {measured / dense_ms:.3f} |")
    return lines + [""], errors


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.latency_table")
    parser.add_argument("--env", default="resnet20-cifar10")
    parser.add_argument("--spaces", help="comma-separated search spaces (default: the env's and all-convs)")
    parser.add_argument("--max-ratio", type=float, help="override every space's max_ratio (to reach low fractions)")
    parser.add_argument("--fractions", default="0.3,0.5,0.7", help="targets as fractions of the dense latency")
    parser.add_argument("--policies", type=int, default=3, help="policies per fraction: uniform, then random shapes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50, help="timed passes per measurement (median)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch of the timed inputs (default 1)")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    try:
        config = load_env(args.env)
        device = resolve_device(args.device)
        fractions = [float(f) for f in args.fractions.split(",")]
        if args.max_ratio is not None and not 0.0 < args.max_ratio < 1.0:
            raise ValueError(f"--max-ratio must be in (0, 1), got {args.max_ratio}")
        if args.batch_size < 1 or args.repeats < 1 or args.policies < 1:
            raise ValueError("--batch-size, --repeats and --policies must be >= 1")
    except (AutopruneError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    spaces = args.spaces.split(",") if args.spaces else list(dict.fromkeys([config.search_space, "all-convs"]))
    settings = LatencySettings(device=str(device), threads=args.threads, repeats=args.repeats, batch_size=args.batch_size)
    model = build_model(config.model, config.num_classes, config.model_args).eval()
    x = torch.zeros([args.batch_size, *config.input_shape[1:]])
    lines = [f"# Latency lookup table against measured latency: {args.env}", ""]
    lines += machine_header(["python", "-m", "autoprune.bench.studies.latency_table", *argv])
    lines += [f"- device `{device}`, {plural(args.threads, 'thread')}, batch {settings.batch_size}; every latency is the median "
              f"of {args.repeats} forward passes after {settings.warmup} warm-up passes",
              "- error = predicted / measured - 1", ""]
    errors: list[float] = []
    for space_name in spaces:
        space_lines, space_errors = run_space(model, x, space_name, args.max_ratio, fractions, args.policies, settings)
        lines += space_lines
        errors += space_errors
        print("\n".join(space_lines), flush=True)
    if errors:
        worst = max(abs(e) for e in errors)
        lines += [f"Largest absolute error over all policies: **{100 * worst:.1f}%**; mean "
                  f"{100 * float(np.mean(np.abs(errors))):.1f}%.", ""]
    write_markdown(args.out, f"latency-table-{args.env}{f'-batch{args.batch_size}' if args.batch_size > 1 else ''}.md",
                   lines, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
