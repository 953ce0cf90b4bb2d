"""Did the searches fit their proxy images? The final policies of a benchmark, scored again on every image.

Usage::

    AUTOPRUNE_WEIGHTS_DIR=../shared/weights/cifar10 AUTOPRUNE_DATA_DIR=../shared/data \\
        python -m autoprune.bench.studies.proxy_sample --cells results/benchmarks/cells/resnet56-cifar10-anytime

A search picks its final policy by accuracy on the proxy images, so that accuracy is biased upwards, and more
so the more candidates near the final one it compared on the same images. This study rebuilds the final policy
of every cell of a benchmark (with the Evaluator settings the benchmark recorded) and scores it on the whole
proxy split: the images the searches were scored on (the first ``images`` of the split), the rest of the split,
which no search saw, and the report split. Per method it gives the mean of each, and the *selection gap*: the
accuracy on the search's images minus that on the unseen rest (how those images differ for networks of that
shape, plus the luck a search selected for). Across policies it gives the Spearman rank
correlation of each with the report accuracy. Writes ``<out>/<bench>-<budget>-proxy-sample.md`` and a scatter plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from autoprune.bench.finetune_cells import run_study
from autoprune.bench.machine import machine_header, write_markdown
from autoprune.bench.stats import mean_std
from autoprune.core.budget import Budget
from autoprune.core.proxy import predict
from autoprune.errors import ConfigError
from autoprune.experiment import Experiment, build_experiment
from autoprune.plotting import pyplot, save_figure
from autoprune.presets import EnvConfig


def rescore(exp: Experiment, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cell's final policy: its hits on the whole proxy split (in the split's order, so the first ``images``
    are the search's proxy images) and its accuracy on the report split."""
    split = exp.split("proxy")
    images, labels = split.batch(slice(None), exp.evaluator.proxy.device)
    rows = []
    for cell in cells:
        network = exp.evaluator.build(exp.space.policy_from_kept(cell["kept"]))
        report = exp.accuracy(network, "report")  # recalibrates the network on the Evaluator's batches first
        hits = predict(network, images, exp.evaluator.proxy.batch_size) == labels
        rows.append({"method": cell["method"], "seed": cell["seed"], "proxy_acc": cell["proxy_acc"],
                     "report_acc": report, "hits": hits})
    return rows


def summarize(rows: list[dict[str, Any]], seen: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-method means of the accuracy on the ``seen`` images, the unseen rest, the whole split and the report
    split, with the selection gap (seen minus rest); and each accuracy's Spearman rho with the report accuracy.

    Raises:
        ConfigError: if the split has no image the searches did not see.
    """
    if not all(len(r["hits"]) > seen for r in rows):
        raise ConfigError(f"the proxy split has no image beyond the searches' {seen}: nothing unseen to compare with")
    for r in rows:
        r["seen"], r["rest"], r["all"] = (r["hits"][:seen].float().mean().item(),
                                          r["hits"][seen:].float().mean().item(), r["hits"].float().mean().item())
        r["gap"] = r["seen"] - r["rest"]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["method"]].append(r)
    methods = [{"method": m, "seeds": len(g), **{k: [r[k] for r in g] for k in ("seen", "rest", "all", "report_acc", "gap")}}
               for m, g in groups.items()]
    report = [r["report_acc"] for r in rows]
    rho = {k: stats.spearmanr([r[k] for r in rows], report).statistic if len(rows) > 2 else float("nan")
           for k in ("seen", "rest", "all")}
    return methods, rho


def plot(rows: list[dict[str, Any]], seen: int, total: int, path: Path) -> Path:
    """Accuracy on the search's images and on the whole split against the report accuracy, one point per policy."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, key, label in ((axes[0], "seen", f"the searches' {seen} proxy images"), (axes[1], "all", f"all {total} images of the proxy split")):
        colours = plt.get_cmap("tab20")
        for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            mine = [r for r in rows if r["method"] == method]
            ax.scatter([100 * r[key] for r in mine], [100 * r["report_acc"] for r in mine], label=method, s=22,
                       color=colours(i % 20))
        low = min(100 * min(r[key], r["report_acc"]) for r in rows)
        high = max(100 * max(r[key], r["report_acc"]) for r in rows)
        ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"accuracy on {label} (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy, report split (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path, "Final policies: proxy accuracy against test accuracy")


def main(argv: list[str] | None = None) -> int:
    """Score every finished cell's final policy again and write the report (a bad input: one line, exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.proxy_sample")
    parser.add_argument("--cells", required=True, help="a benchmark's cell folder (holding bench.json)")
    parser.add_argument("--budget", default="0.5flops", help="the budget folder of the cells (default 0.5flops)")
    parser.add_argument("--evals", type=int, help="only the cells of this many evaluations (default: every cell)")
    parser.add_argument("--out", default="results/benchmarks")
    return run_study(_run, parser.parse_args(argv), argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    folder = Path(args.cells)
    budget = str(Budget.parse(args.budget))
    try:
        bench = json.loads((folder / "bench.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{folder / 'bench.json'} is missing or unreadable; pass the cell folder of an "
                          f"`autoprune bench` run") from None
    pattern = f"*-e{args.evals}-s*.json" if args.evals else "*.json"
    cells = [json.loads(p.read_text()) for p in sorted((folder / budget).glob(pattern))]
    cells = [c for c in cells if "kept" in c]
    if not cells:
        raise ConfigError(f"no finished cells in {folder / budget}")
    config = EnvConfig(**bench["env"])
    seen = config.proxy.get("images")
    if seen is None:
        raise ConfigError(f"the cells in {folder} were scored on the whole proxy split: no image is left unseen")
    whole = {**config.to_dict(), "proxy": {k: v for k, v in config.proxy.items() if k != "images"}}
    torch.set_num_threads(1)
    exp = build_experiment(EnvConfig(**whole))
    rows = rescore(exp, cells)
    methods, rho = summarize(rows, seen)
    total = len(rows[0]["hits"])
    name = f"{folder.name}-{budget}-proxy-sample"
    lines = [f"# Did the searches fit their proxy images? {folder.name} at {budget}", "",
             *machine_header([Path(sys.executable).name, "-m", "autoprune.bench.studies.proxy_sample",
                              *(argv if argv is not None else sys.argv[1:])]),
             f"- {len(rows)} final policies of the cells in `{folder / budget}`, rebuilt and recalibrated with the "
             f"benchmark's Evaluator settings; the searches scored candidates on the first {seen} images of the "
             f"`{config.splits['proxy']}` split ({total} images); the other {total - seen} no search saw",
             "- selection gap: accuracy on the searches' images minus accuracy on the unseen rest; mean ± std over "
             "seeds. Part of it is how those images differ from the rest for networks of that shape (a policy chosen "
             "without comparing candidates, such as uniform, shows that part); what a search adds to it is luck on "
             "its images that it selected for", "",
             f"| method | seeds | searches' {seen} images (%) | unseen {total - seen} (%) | all {total} (%) | "
             "report split (%) | selection gap (points) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m in methods:
        lines.append(f"| {m['method']} | {m['seeds']} | {mean_std(m['seen'])} | {mean_std(m['rest'])} | {mean_std(m['all'])} | "
                     f"{mean_std(m['report_acc'])} | {mean_std(m['gap'])} |")
    lines += ["", f"Spearman rank correlation with the report accuracy over the {len(rows)} policies: the searches' "
              f"{seen} images {rho['seen']:.3f}, the unseen {total - seen} {rho['rest']:.3f}, all {total} "
              f"{rho['all']:.3f}.", ""]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    figure = plot(rows, seen, total, Path(args.out) / f"{name}.png")
    lines += [f"![proxy against test accuracy]({figure.name})", ""]
    write_markdown(args.out, f"{name}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
