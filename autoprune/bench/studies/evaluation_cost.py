"""What makes a candidate's forward passes cheaper without changing its score, and what racing would save.

Usage::

    python -m autoprune.bench.studies.evaluation_cost --env resnet56-cifar10 --budget 0.5flops --policies 60

On random-search policies at the budget (the candidates a search actually scores) it measures:

1. **Forward paths.** Recalibration and scoring seconds of the pruned network under ``torch.no_grad``
   (the plain path: the evaluation before racing, recalibrated on 512 images), ``torch.inference_mode``,
   BatchNorm folded into the convolutions, channels-last memory format, larger batches, and the default now
   (the fast path recalibrated on the preset's images), each against the plain path (images one path gets
   right and the other wrong).
2. **Fewer recalibration images.** The proxy accuracy of every policy after recalibrating on 128, 256 and 512
   images, and how well each ranks the policies like 512 images do (Spearman and Kendall rank correlation,
   whether the best policy stays the best).
3. **Racing.** From every policy's per-image hits after the preset's recalibration, random-search orders of
   the policies replayed with racing at several confidences: the share of images scored, how many candidates stop at each stage,
   and how many stopped candidates would in fact have beaten the incumbent.

Writes ``results/evaluation-cost-<env>.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats
from torch import nn

from autoprune.bench.machine import machine_header, write_markdown
from autoprune.bench.stats import mean_std
from autoprune.console import Progress
from autoprune.core.budget import Budget
from autoprune.core.proxy import Proxy, fold_batchnorm, recalibrate_batchnorm
from autoprune.core.racing import DEFAULT_EARLY_BATCHES, Racing
from autoprune.experiment import build_experiment
from autoprune.presets import calibration_image_count, load_env
from autoprune.search import get_searcher

PATHS: dict[str, dict[str, object]] = {
    "plain (no_grad, batch 128)": {},
    "inference_mode": {"inference": True},
    "BN folded": {"fold": True},
    "inference_mode + BN folded": {"inference": True, "fold": True},
    "inference_mode + BN folded + channels-last": {"inference": True, "fold": True, "channels_last": True},
    "inference_mode + BN folded, batch 250": {"inference": True, "fold": True, "batch": 250},
    "channels-last throughout + inference_mode + BN folded (the fast path)": {"fast": True},
}
CALIBRATION_IMAGES = (128, 256, 512)
REFERENCE_CALIBRATION = 512
"""Recalibration images of the path the others are measured against (4 batches of 128: the presets' setting before
this study moved them to 256)."""
CONFIDENCES = (0.9, 0.95, 0.99)


def _forward(network: nn.Module, proxy: Proxy, inference: bool = False, fold: bool = False,
             channels_last: bool = False, batch: int = 128, fast: bool = False,
             calibration: int | None = None) -> tuple[torch.Tensor, float, float]:
    """Recalibrate and score ``network`` one way: (per-image hits, recalibration and scoring CPU seconds). ``fast``:
    the fast proxy's own :meth:`~autoprune.core.proxy.Proxy.prepare` and :meth:`~autoprune.core.proxy.Proxy.correct`,
    recalibrated on the first ``calibration`` images (default: all of the proxy's)."""
    start = time.process_time()
    if fast:
        prepared = proxy.prepare(network, batches=None if calibration is None else (0, calibration // proxy.batch_size))
        mid = time.process_time()
        hits = proxy.correct(prepared)
        return hits, mid - start, time.process_time() - mid
    recalibrate_batchnorm(network, proxy.calibration)
    if fold:
        network = fold_batchnorm(network)
    images = proxy.images
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    mid = time.process_time()
    with torch.inference_mode() if inference else torch.no_grad():
        predictions = torch.cat([network(x).argmax(1) for x in images.split(batch)])
    return predictions == proxy.targets, mid - start, time.process_time() - mid




def replay_racing(hits: np.ndarray, early: np.ndarray, racing: Racing | None, order: np.ndarray,
                  cost: tuple[float, float, int]) -> dict[str, float]:
    """Replay random search over policies in ``order`` with ``racing`` (None: every image) from their per-image
    hits (``early``: the hits after recalibrating on the racing's early batches, used before the last stage).

    Returns the share of images scored, stops per stage, stops that were wrong (the candidate was in fact better
    than the incumbent), the best policy's accuracy and the CPU seconds per candidate by the cost model ``cost`` =
    (seconds per recalibration batch, seconds per scored image, batches of a full recalibration).
    """
    per_batch, per_image, batches = cost
    total = hits.shape[1]
    early_batches = batches if racing is None or racing.early_batches is None else racing.early_batches
    incumbent: int | None = None
    scored, seconds, wrong = 0, 0.0, 0
    stops = {n: 0 for n in (racing.stages[:-1] if racing else ())}
    for i in order:
        stopped_at, seen = None, 0
        if racing is not None and incumbent is not None:
            before = early if early_batches < batches else hits
            for n in racing.stages[:-1]:
                seen = n
                if racing.loses(torch.from_numpy(before[i, :n]), torch.from_numpy(hits[incumbent]), total):
                    stopped_at = n
                    break
        if stopped_at is not None:
            scored += stopped_at
            seconds += early_batches * per_batch + stopped_at * per_image
            stops[stopped_at] += 1
            wrong += int(hits[i].sum() > hits[incumbent].sum())  # type: ignore[index]
            continue
        scored += total
        rescored = seen if early_batches < batches else 0  # scored again after the full recalibration
        seconds += batches * per_batch + (total + rescored) * per_image
        if incumbent is None or hits[i].sum() > hits[incumbent].sum():
            incumbent = int(i)
    return {"scored": scored / (total * len(order)), "wrong": wrong, "best": float(hits[incumbent].mean()),  # type: ignore[index]
            "seconds": seconds / len(order), **{f"stop@{n}": s for n, s in stops.items()}}


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and write the report."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.evaluation_cost")
    parser.add_argument("--env", default="resnet56-cifar10")
    parser.add_argument("--budget", default="0.5flops")
    parser.add_argument("--policies", type=int, default=60, help="random-search policies (default 60)")
    parser.add_argument("--timed", type=int, default=20, help="of which this many are timed on every path (default 20)")
    parser.add_argument("--orders", type=int, default=50, help="random orders replayed for racing (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU seconds then do not "
                        "depend on other load on the machine)")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    budget = Budget.parse(args.budget)
    old_path = {"calibration_images": REFERENCE_CALIBRATION}
    exp = build_experiment(load_env(args.env), {"proxy_forward": "plain", **old_path})
    evaluator, proxy = exp.evaluator, exp.evaluator.proxy
    fast = build_experiment(load_env(args.env), old_path).evaluator.proxy  # the same images, in the same order
    default_images = calibration_image_count(load_env(args.env).proxy)
    paths = {**PATHS, f"the fast path on {default_images} recalibration images (the default)":
             {"fast": True, "calibration": default_images}}
    searcher = get_searcher("random")(evaluator, budget, evals=args.policies, seed=args.seed)
    policies = [searcher.propose()[0] for _ in range(args.policies)]
    networks: list[Callable[[], nn.Module]] = [
        (lambda k=evaluator.kept(p): evaluator.pruner.prune(k)) for p in policies]

    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    flips: dict[str, int] = {name: 0 for name in paths}
    batch_counts = [k // proxy.batch_size for k in CALIBRATION_IMAGES]
    hits_at = {b: np.zeros((args.policies, len(proxy)), dtype=bool) for b in batch_counts}  # by recalibration batches
    names = list(paths)
    with Progress(args.policies, "policies", "network", True) as bar:
        for i, build in enumerate(networks):
            network = build()
            if i < args.timed:
                hits_by: dict[str, torch.Tensor] = {}
                for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order against drift
                    on = fast if paths[name].get("fast") else proxy
                    hits_by[name], recal_s, score_s = _forward(copy.deepcopy(network), on, **paths[name])  # type: ignore[arg-type]
                    timings[name].append((recal_s, score_s))
                plain = hits_by[names[0]]
                for name in names:
                    flips[name] += int((hits_by[name] != plain).sum())
            for b in batch_counts:
                hits_at[b][i] = fast.correct(fast.prepare(copy.deepcopy(network), batches=(0, b))).numpy()
            bar.update()
    full_batches = default_images // proxy.batch_size  # racing replayed on the default recalibration
    hits = hits_at[full_batches]
    calibration_acc = {k: list(hits_at[b].mean(axis=1)) for k, b in zip(CALIBRATION_IMAGES, batch_counts)}

    fast_recal, fast_score = (statistics.mean(t[j] for t in timings[names[-1]]) for j in (0, 1))
    cost = (fast_recal / full_batches, fast_score / len(proxy), full_batches)
    plain_seconds = statistics.mean(r + s for r, s in timings[names[0]])
    rng = np.random.default_rng(args.seed)
    orders = [rng.permutation(args.policies) for _ in range(args.orders)]
    no_racing = [replay_racing(hits, hits, None, o, cost) for o in orders]
    default_stages = Racing.parse("on", len(proxy))
    assert default_stages is not None
    racing_rows = [f"| off | — | 100% | — | — | {len(orders)}/{len(orders)} | "
                   f"{mean_std([r['best'] for r in no_racing], 100, 2)} | {mean_std([r['seconds'] for r in no_racing], 1, 2)} | "
                   f"{plain_seconds / statistics.mean(r['seconds'] for r in no_racing):.2f}x |"]
    for early_batches in (None, DEFAULT_EARLY_BATCHES):  # replayed as given, whatever MIN_BATCHES_LEFT says
        for confidence in CONFIDENCES:
            racing = Racing(default_stages.stages, confidence, early_batches)
            early = hits_at[early_batches] if early_batches else hits
            runs = [replay_racing(hits, early, racing, o, cost) for o in orders]
            same_best = sum(r["best"] == b["best"] for r, b in zip(runs, no_racing))
            stops = " / ".join(mean_std([r[f"stop@{n}"] for r in runs], 1, 1) for n in racing.stages[:-1])
            racing_rows.append(
                f"| {100 * confidence:g}% | {'all' if early_batches is None else early_batches} | "
                f"{mean_std([r['scored'] for r in runs], 100, 1)}% | {stops} | "
                f"{mean_std([r['wrong'] for r in runs], 1, 2)} | {same_best}/{len(orders)} | "
                f"{mean_std([r['best'] for r in runs], 100, 2)} | {mean_std([r['seconds'] for r in runs], 1, 2)} | "
                f"{plain_seconds / statistics.mean(r['seconds'] for r in runs):.2f}x |")

    plain_total = [r + s for r, s in timings[names[0]]]
    path_rows = []
    for name in names:
        recal = [r for r, _ in timings[name]]
        score = [s for _, s in timings[name]]
        total = [r + s for r, s in timings[name]]
        speedup = statistics.mean(p / t for p, t in zip(plain_total, total))
        path_rows.append(f"| {name} | {mean_std(recal, 1, 3)} | {mean_std(score, 1, 3)} | {mean_std(total, 1, 3)} | {speedup:.2f}x | "
                         f"{flips[name]} |")
    reference = calibration_acc[REFERENCE_CALIBRATION]
    calibration_rows = []
    for k in CALIBRATION_IMAGES:
        rho = stats.spearmanr(calibration_acc[k], reference).statistic
        tau = stats.kendalltau(calibration_acc[k], reference).statistic
        calibration_rows.append(
            f"| {k} | {mean_std(calibration_acc[k], 100, 2)} | {rho:.3f} | {tau:.3f} | "
            f"{'yes' if int(np.argmax(calibration_acc[k])) == int(np.argmax(reference)) else 'no'} |")

    command = [sys.executable.rsplit("/", 1)[-1], "-m", "autoprune.bench.studies.evaluation_cost", *(argv or sys.argv[1:])]
    lines = [f"# Cheaper candidate evaluation: {args.env} at {budget}", "", *machine_header(command),
             f"- {args.policies} random-search policies at {budget} (seed {args.seed}); the first {args.timed} timed on "
             f"every path, each path on its own copy of the pruned network, paths in rotating order",
             f"- proxy: {len(proxy)} images, BatchNorm recalibration on {sum(len(b) for b in proxy.calibration)} images "
             f"(the plain path: the evaluation before this study; the env's default now: {default_images}), torch "
             f"threads {torch.get_num_threads()}", "",
             f"## Forward paths (CPU seconds per candidate on {args.threads} torch thread(s), mean ± std over policies)",
             "",
             "| path | recalibrate (s) | score (s) | total (s) | speed-up vs plain | images scored differently from plain |",
             "|---|---:|---:|---:|---:|---:|", *path_rows, "",
             f"Images scored differently: of {len(proxy)} × {args.timed} (policy, image) pairs, those a path gets right "
             "and the plain path wrong or the reverse (the default recalibrates on other images, so its scores may "
             "differ: how it ranks policies is in the next table).",
             "", "## Fewer recalibration images", "",
             f"| recalibration images | proxy acc (%) | Spearman vs {REFERENCE_CALIBRATION} | Kendall | same best policy |",
             "|---:|---:|---:|---:|---|", *calibration_rows, "",
             "## Racing, replayed on the policies' per-image hits", "",
             f"Stages {' -> '.join(map(str, default_stages.stages))} images; {args.orders} random orders of the "
             f"{args.policies} policies (a random search), recalibrated on {default_images} images (the default); mean ± "
             "std over orders. Early batches: BatchNorm "
             "recalibration batches before the last stage (a candidate that reaches it is recalibrated on every batch "
             "and scored again). CPU seconds per candidate from the fast path's measured cost per recalibration "
             f"batch ({cost[0]:.3f} s) and per scored image ({1e3 * cost[1]:.3f} ms), pruning not counted; speed-up "
             f"against the plain path's full evaluation ({plain_seconds:.2f} s).", "",
             "| confidence | early batches | images scored | stops per stage | wrong stops | same best as without racing "
             "| best proxy acc (%) | CPU s per candidate | speed-up vs plain |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *racing_rows, "",
             "A wrong stop is a stopped candidate whose accuracy on all images, fully recalibrated, was above the "
             "incumbent's at that moment.", ""]
    write_markdown(args.out, f"evaluation-cost-{args.env}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
