"""Recovery without fine-tuning: BatchNorm recalibration against least-squares reconstruction.

Usage::

    AUTOPRUNE_WEIGHTS_DIR=../shared/weights/cifar10 AUTOPRUNE_DATA_DIR=../shared/data \\
        python -m autoprune.bench.studies.recovery --env resnet56-cifar10 --weights resnet56-4bfd9763-jpeg.th

Prunes the network with the uniform policy at the budget and measures its accuracy on the report split
(and, with ``--full-test``, on the whole test split) after BatchNorm recalibration alone, after
reconstruction (dense BatchNorm statistics kept, as the Evaluator does), and after reconstruction
followed by recalibration. Then it times ``--evals`` random-search evaluations (the same policies) on an
Evaluator with each recovery, to give the extra cost per evaluation. Writes
``results/recovery-<model>-<dataset>.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from autoprune.bench.machine import machine_header, write_markdown
from autoprune.core.budget import Budget
from autoprune.core.cost import FLOPS_LABEL
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.proxy import recalibrate_batchnorm
from autoprune.core.reconstruct import Reconstructor
from autoprune.experiment import build_experiment
from autoprune.presets import load_env
from autoprune.search import get_searcher


def _timed_search(evaluator: Evaluator, budget: Budget, evals: int, seed: int) -> list[Candidate]:
    result = get_searcher("random")(evaluator, budget, evals=evals, seed=seed).search()
    return [c for c in result.candidates if c.ok and not c.cached]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.recovery")
    parser.add_argument("--env", default="resnet56-cifar10")
    parser.add_argument("--weights", default="resnet56-4bfd9763-jpeg.th")
    parser.add_argument("--budget", default="0.5flops")
    parser.add_argument("--evals", type=int, default=3, help="timed evaluations per recovery (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-test", action="store_true", help="also measure accuracy on the whole test split")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)

    budget = Budget.parse(args.budget)
    config = load_env(args.env)
    config.weights = args.weights
    exp = build_experiment(config)
    ev = exp.evaluator
    uniform = get_searcher("uniform")(ev, budget, evals=1, seed=0).search().best
    kept = uniform.kept
    images = torch.cat(ev.proxy.calibration)
    t = time.perf_counter()
    reconstructor = Reconstructor(exp.model, exp.example_inputs, exp.space, ev.pruner, images, seed=args.seed)
    setup_s = time.perf_counter() - t
    splits = ["report", "test"] if args.full_test else ["report"]

    def accuracies(network: torch.nn.Module) -> dict[str, float]:
        return {s: exp.accuracy(network, s, recalibrate=False) for s in splits}

    dense = accuracies(copy.deepcopy(exp.model))
    bn = ev.pruner.prune(kept)
    recalibrate_batchnorm(bn, ev.proxy.calibration)
    rec = ev.pruner.prune(kept)
    t = time.perf_counter()
    reconstructor(rec, kept)
    rec_s = time.perf_counter() - t
    rows = {"BN recalibration alone": accuracies(bn), "reconstruction (dense BN statistics)": accuracies(rec)}
    recalibrate_batchnorm(rec, ev.proxy.calibration)
    rows["reconstruction, then BN recalibration"] = accuracies(rec)

    bn_candidates = _timed_search(ev, budget, args.evals, args.seed)
    ev_rec = Evaluator(exp.model, exp.example_inputs, exp.space, ev.proxy, config.criterion, recovery=reconstructor)
    rec_candidates = _timed_search(ev_rec, budget, args.evals, args.seed)
    bn_total = statistics.mean(c.timings["total"] for c in bn_candidates)
    rec_total = statistics.mean(c.timings["total"] for c in rec_candidates)
    recover = statistics.mean(c.timings["recover"] for c in rec_candidates)
    recal = statistics.mean(c.timings["recalibrate"] for c in bn_candidates)
    bn_proxy = statistics.mean(c.proxy_acc for c in bn_candidates)
    rec_proxy = statistics.mean(c.proxy_acc for c in rec_candidates)

    split_names = [f"{s} (`{config.splits.get(s, s)}`, {len(exp.split(s))} images)" for s in splits]
    lines = [f"# Recovery without fine-tuning: {config.model} on {config.dataset}, uniform policy at {budget}", ""]
    lines += machine_header([sys.executable.rsplit("/", 1)[-1], "-m", "autoprune.bench.studies.recovery", *(argv or sys.argv[1:])])
    lines += [
        f"- env `{args.env}`, weights `{Path(exp.weights_source).name}`; {FLOPS_LABEL} {uniform.flops / 1e6:.3f}M "
        f"({uniform.flops / ev.cost.dense_flops:.4f} of dense)",
        f"- calibration: {len(images)} `{config.splits['calibration']}` images (BN recalibration and reconstruction "
        f"use the same ones); reconstruction samples {reconstructor.points} output positions per image "
        f"and convolution, ridge {reconstructor.ridge:g} relative to the mean diagonal of A^T A",
        "",
        "| network | " + " | ".join(split_names) + " |",
        "|---|" + "---:|" * len(splits),
        "| dense | " + " | ".join(f"{100 * dense[s]:.2f}%" for s in splits) + " |",
        *(f"| pruned, {name} | " + " | ".join(f"{100 * acc[s]:.2f}%" for s in splits) + " |" for name, acc in rows.items()),
        "",
        "## Cost",
        "",
        f"- one-time set-up of the reconstruction (dense targets, dependency graph): {setup_s:.2f} s",
        f"- reconstruction of the uniform network ({len(reconstructor.consumers(kept))} layers): {rec_s:.2f} s",
        f"- Evaluator, mean seconds per evaluation over the same {len(bn_candidates)} random-search policies: "
        f"BN recalibration proxy **{bn_total:.2f} s** (of which recalibration {recal:.2f} s), reconstruction proxy "
        f"**{rec_total:.2f} s** (of which reconstruction {recover:.2f} s, no recalibration): "
        f"**{rec_total - bn_total:+.2f} s ({rec_total / bn_total:.2f}x)** per evaluation; their mean proxy accuracy "
        f"({len(ev.proxy)} `{config.splits['proxy']}` images): {100 * bn_proxy:.2f}% with BN recalibration, "
        f"{100 * rec_proxy:.2f}% with reconstruction",
        "",
    ]
    write_markdown(args.out, f"recovery-{config.model}-{config.dataset}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
