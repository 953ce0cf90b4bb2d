"""How much faster random search and evolution run on several workers sharing one study, and whether they find
policies as good.

Usage::

    python -m autoprune.bench.studies.workers --env resnet20-cifar10 --budget 0.5flops --evals 200 --seeds 3

Every cell (method, workers, seed) is one ``autoprune search`` run on a journal-file study of its own, with one
CPU thread per worker process (``OMP_NUM_THREADS=1``; a machine with two cores allows at most a 2x speed-up),
the same settings for 1 and K workers (with one worker the search also works through the shared study, so the
algorithms compared are the same). It records the search's wall-clock seconds (from the start of the search to
its last evaluation, worker processes' start included) and the best policy's proxy and test accuracy. Each
finished cell is saved as JSON under ``<cells>/workers-<env>/<budget>/`` and skipped by a rerun, so a stopped
study resumes. Writes ``<out>/workers-<env>.md``: mean ± std over seeds, the speed-up of K workers over one,
and whether the best policies' accuracy stays within one standard deviation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune.bench.machine import library_versions, machine_description, machine_header, write_markdown
from autoprune.bench.stats import mean_std
from autoprune.console import Progress
from autoprune.core.budget import Budget
from autoprune.core.policy import PolicyRecord
from autoprune.io import atomic_write_text
from autoprune.presets import load_env
from autoprune.run.search import SearchSettings, run_search
from autoprune.trials.study import counted, open_storage

GOAL = 1.7
"""The speed-up the issue asks of two workers."""


def run_cell(env: str, budget: str, method: str, workers: int, seed: int, evals: int, data_dir: str | None) -> dict[str, Any]:
    """One search on ``workers`` worker processes (one CPU thread each) sharing a journal-file study; its record."""
    settings = SearchSettings(env=load_env(env).to_dict(), budget=budget, method=method, evals=evals, seed=seed,
                              workers=workers, threads=1, data_dir=data_dir)
    with tempfile.TemporaryDirectory(prefix="autoprune-workers-") as tmp:
        settings.storage = str(Path(tmp) / "study.log")
        start = time.perf_counter()
        run_dir = run_search(settings, str(Path(tmp) / "run"), progress=False)
        wall = time.perf_counter() - start
        record = PolicyRecord.load(run_dir / "policy.json")
        trials = optuna.load_study(study_name=None, storage=open_storage(settings.storage)).get_trials(deepcopy=False)
    speculative = [t for t in trials if t.user_attrs.get("speculative")]
    return {"method": method, "workers": workers, "seed": seed, "budget": budget, "evals": record.found_by["evaluations"],
            "seconds": record.found_by["seconds"], "wall_seconds": wall, "proxy_acc": record.metrics["proxy_acc"],
            "report_acc": record.metrics["report_acc"], "flops": record.metrics["flops"],
            "speculative": sum(counted(t) for t in speculative), "speculative_dropped": sum(not counted(t) for t in speculative),
            "machine": machine_description(), "versions": library_versions(),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}




def _within_one_std(a: list[float], b: list[float]) -> bool:
    """Whether the means of ``a`` and ``b`` differ by at most the larger of their standard deviations."""
    spread = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in (a, b))
    return abs(statistics.mean(a) - statistics.mean(b)) <= spread


def _speculation(cells: list[dict[str, Any]]) -> str:
    """Children scored speculatively per search (evolution): recorded, and dropped (their parent was beaten)."""
    if any("speculative" not in c for c in cells):
        return "—"  # (cells made before evolution speculated)
    return (f"{mean_std([c['speculative'] for c in cells], 1, 1)} / "
            f"{mean_std([c['speculative_dropped'] for c in cells], 1, 1)}")


def report_lines(cells: list[dict[str, Any]], counts: list[int]) -> list[str]:
    """The report's tables: per method and number of workers, mean ± std over seeds, and the speed-up over one
    worker (mean seconds of one worker over mean seconds of K, and mean ± std of the per-seed ratios)."""
    lines = ["| method | workers | seeds | search (s) | speed-up | per-seed speed-up | whole command (s) | its speed-up "
             "| proxy acc (%) | test acc (%) | accuracy as one worker's (within one std) | speculative: kept / dropped |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for method in dict.fromkeys(c["method"] for c in cells):
        by = {k: {c["seed"]: c for c in cells if c["method"] == method and c["workers"] == k} for k in counts}
        one = by.get(1, {})
        for k in counts:
            mine = list(by[k].values())
            if not mine:
                continue
            seconds = [c["seconds"] for c in mine]
            paired = [one[s]["seconds"] / c["seconds"] for s, c in by[k].items() if s in one]
            walls = [c["wall_seconds"] for c in mine]
            speed = f"{statistics.mean(c['seconds'] for c in one.values()) / statistics.mean(seconds):.2f}x" if one else "—"
            whole = f"{statistics.mean(c['wall_seconds'] for c in one.values()) / statistics.mean(walls):.2f}x" if one else "—"
            same = "—" if k == 1 or len(one) < 2 or len(mine) < 2 else (
                "yes" if all(_within_one_std([c[m] for c in one.values()], [c[m] for c in mine])
                             for m in ("proxy_acc", "report_acc")) else "no")
            lines.append(f"| {method} | {k} | {len(mine)} | {mean_std(seconds, 1, 1)} | {speed} | "
                         f"{mean_std(paired, 1) + 'x' if paired else '—'} | {mean_std(walls, 1, 1)} | {whole} | "
                         f"{mean_std([c['proxy_acc'] for c in mine], 100)} "
                         f"| {mean_std([c['report_acc'] for c in mine], 100)} | {same} | {_speculation(mine)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the missing cells, then write the report from every finished cell."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.studies.workers")
    parser.add_argument("--env", default="resnet20-cifar10")
    parser.add_argument("--budget", default="0.5flops")
    parser.add_argument("--methods", default="random,evolution", help="comma list (default random,evolution)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma list (default 1,2)")
    parser.add_argument("--evals", type=int, default=200, help="evaluations per search (default 200)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", help="data folder (default AUTOPRUNE_DATA_DIR)")
    parser.add_argument("--cells", default="results/benchmarks/cells", help="folder of the finished cells")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # one CPU thread per worker process (they inherit it) ...
    torch.set_num_threads(1)  # ... and this one, worker 0, which imported torch before the line above
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    budget = str(Budget.parse(args.budget))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    counts = sorted({int(k) for k in args.workers.split(",")})
    folder = Path(args.cells) / f"workers-{args.env}" / budget
    todo = [(seed, m, k) for seed in range(args.seeds) for m in methods for k in counts]
    with Progress(len(todo), "workers", "cell", True) as bar:
        for seed, method, k in todo:
            path = folder / f"{method}-w{k}-e{args.evals}-s{seed}.json"
            if not path.is_file():
                bar.set_description(f"{method} on {k} worker(s), seed {seed}")
                cell = run_cell(args.env, budget, method, k, seed, args.evals, args.data_dir)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(cell, indent=1) + "\n")
            bar.update()
    cells = [json.loads((folder / f"{m}-w{k}-e{args.evals}-s{s}.json").read_text()) for s, m, k in todo]
    command = [Path(sys.executable).name, "-m", "autoprune.bench.studies.workers", *(argv if argv is not None else sys.argv[1:])]
    config = load_env(args.env)
    lines = [f"# Searching on several workers: {args.env} at {budget}", "", *machine_header(command),
             f"- network: {config.model} with the preset's weights `{config.weights}`, data {config.dataset}",
             f"- {args.evals} evaluations per search, seeds 0..{args.seeds - 1}; each worker a process with one CPU "
             f"thread; every search (one worker too) on a journal-file study of its own; racing on",
             "- search (s): wall-clock seconds from the start of the search to its last evaluation, worker processes' "
             "start included; speed-up: one worker's mean over K workers' mean (per-seed: mean ± std of the ratios); "
             "whole command: from the call to the written run directory (setup, search, scoring the best policy on the "
             "test split, plots), the time a user waits",
             "- speculative (evolution): children a worker scored from the best candidate so far while a generation's "
             "last children ran elsewhere, per search: recorded (their parent held) / dropped uncounted (it was beaten)",
             *([f"- goal: at least {GOAL}x with 2 workers, the best policies as accurate within one standard "
                "deviation"] if 1 in counts and 2 in counts else []), "",
             *report_lines(cells, counts), ""]
    write_markdown(args.out, f"workers-{args.env}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
