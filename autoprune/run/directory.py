"""The run directory: resolved config, ``trials.csv``, ``policy.json``, ``summary.md`` and plots; one command at a time."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from autoprune.console import plural
from autoprune.core.cost import FLOPS_LABEL
from autoprune.core.metrics import BudgetMetric, get_metric, recorded_metrics
from autoprune.core.policy import PolicyRecord
from autoprune.errors import ConfigError
from autoprune.io import atomic_write_text, load_yaml, prepare_output_dir
from autoprune.plotting import pyplot, save_figure

RUNS_ROOT = Path("results") / "runs"
CONFIG_FILE = "config.yaml"


def new_run_dir(out: str | Path | None, env: str, method: str) -> Path:
    """Create the run directory (``results/runs/<time>-<env>-<method>/`` unless ``out`` is given).

    Raises:
        ConfigError: if ``out`` is a file, exists and is not empty, or cannot be created.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{_file_name(env)}-{_file_name(method)}"  # an env file's name cannot lead out of RUNS_ROOT
        path = RUNS_ROOT / name
        suffix = 1
        while path.exists():
            suffix += 1
            path = RUNS_ROOT / f"{name}-{suffix}"
    else:
        path = Path(out)
    return prepare_output_dir(path, what="run directory")


def _file_name(text: str) -> str:
    """``text`` as one safe file-name component: no separators, no leading dots."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip(".-") or "run"


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for one command while the block runs: a second command on it at the same time is refused.

    The lock is the operating system's (``flock`` on the folder): it ends with the process, however it ends.

    Raises:
        ConfigError: if another command holds the folder.
    """
    try:
        import fcntl
    except ImportError:  # Windows: one command per run directory is assumed
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"run directory {str(run_dir)!r} is in use by another autoprune command; wait for it to "
                              f"end (the same command then resumes the run), or choose another --out") from None
        yield
    finally:
        os.close(fd)


def write_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Write the resolved configuration as ``config.yaml`` (atomically)."""
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(dict(config), sort_keys=False))


def read_run_config(run_dir: str | Path, flag: str = "") -> dict[str, Any]:
    """Read a run's ``config.yaml`` (``flag``: the option that named the run, for messages).

    Raises:
        ConfigError: if the file is missing, is not valid YAML (naming the line) or is not a mapping.
    """
    path = Path(run_dir) / CONFIG_FILE
    named = f"{flag} {str(run_dir)!r}" if flag else repr(str(run_dir))
    if not path.is_file():
        raise ConfigError(f"{named} is not a search run directory (no {CONFIG_FILE})")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{str(path)!r} is not text (damaged?); restore the {CONFIG_FILE} the run wrote from a copy, "
                          f"or start again with another --out") from None
    except OSError as e:
        raise ConfigError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    doc = load_yaml(text, repr(str(path)))
    if not isinstance(doc, dict):
        raise ConfigError(f"{str(path)!r} is not a mapping of run settings; restore the {CONFIG_FILE} the run wrote")
    return doc


def _confirmation_lines(confirmation: Mapping[str, Any] | None) -> list[str]:
    if not confirmation:
        return ["- final choice: the best proxy accuracy"]
    return [f"- final choice: the best {confirmation['candidates']} candidates by proxy accuracy scored again on "
            f"{confirmation['images']} unseen proxy-split images; kept the one ranked {confirmation['proxy_rank']} "
            f"by proxy accuracy, {100 * confirmation['accuracy']:.2f}% on those images"]


def write_summary(
    run_dir: Path,
    record: PolicyRecord,
    dense: Mapping[str, float],
    search: Mapping[str, Any],
) -> None:
    """Write ``summary.md``: the budget, dense and pruned metrics, search cost and per-unit channels."""
    m = record.metrics
    lines = [
        f"# autoprune run: {record.env} / {record.found_by.get('method')}",
        "",
        f"- model: `{record.model}`, weights: `{record.weights}`",
        f"- search space: `{record.search_space}`, criterion: `{record.criterion}`",
        f"- budget: `{record.budget}` (limit {search['limit']:,.6g} {search['metric_label']})",
        (f"- method: {record.found_by.get('method')}, seed {record.found_by.get('seed')}, "
        f"{plural(record.found_by.get('evaluations', 0), 'evaluation')} recorded; search wall time of this command "
        f"{record.found_by.get('seconds', 0):.1f} s"),
        (f"- evaluator: {search['evals_per_min']:.1f} evaluations/min of evaluator time, "
        f"{100 * search['overhead_fraction']:.1f}% of it outside the proxy's forward passes"),
        *_confirmation_lines(record.found_by.get("confirmation")),
        "",
        "| | dense | pruned | pruned / dense |",
        "|---|---:|---:|---:|",
        f"| {FLOPS_LABEL} | {dense['flops'] / 1e6:.3f}M | {m['flops'] / 1e6:.3f}M | {m['flops'] / dense['flops']:.4f} |",
        f"| params | {dense['params'] / 1e6:.4f}M | {m['params'] / 1e6:.4f}M | {m['params'] / dense['params']:.4f} |",
    ]
    if m.get("latency_ms") is not None and dense.get("latency_ms"):
        lines.append(f"| latency (ms, {search.get('device')}) | {dense['latency_ms']:.3f} | {m['latency_ms']:.3f} | "
                     f"{m['latency_ms'] / dense['latency_ms']:.4f} |")
    if m.get("latency_predicted_ms") is not None and dense.get("latency_predicted_ms"):
        lines.append(f"| latency predicted by the lookup table (ms) | {dense['latency_predicted_ms']:.3f} | "
                     f"{m['latency_predicted_ms']:.3f} | {m['latency_predicted_ms'] / dense['latency_predicted_ms']:.4f} |")
    for metric in recorded_metrics():  # registered metrics beyond FLOPs, params and latency
        if m.get(metric.column) is not None and dense.get(metric.column):
            c = metric.column
            lines.append(f"| {metric.label} | {dense[c]:,.6g} | {m[c]:,.6g} | {m[c] / dense[c]:.4f} |")
    lines += [
        (f"| proxy accuracy ({search['proxy_split']}, BN recalibrated) | {100 * dense['proxy_acc']:.2f}% | "
        f"{100 * m['proxy_acc']:.2f}% | |"),
        (f"| report accuracy ({search['report_split']}, BN recalibrated) | {100 * dense['report_acc']:.2f}% | "
        f"{100 * m['report_acc']:.2f}% | |"),
        "",
        "Dense accuracies are measured exactly like a candidate's (same BN recalibration).",
        "",
        "| unit | dense channels | kept | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, ch in record.channels.items():
        lines.append(f"| `{name}` | {ch['dense']} | {ch['kept']} | {1 - ch['kept'] / ch['dense']:.3f} |")
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")


def plot_trials(run_dir: Path, trials: pd.DataFrame, best_row: Any, limit: float | None, dense: float,
                metric: BudgetMetric | None = None) -> Path:
    """Write ``trials.png``: proxy accuracy against the budget's ``metric`` (default FLOPs) of every candidate
    (``best_row`` starred, ``limit`` dashed), and best-so-far; ``dense`` is the dense network's cost in it."""
    plt = pyplot()
    metric = metric or get_metric("flops")
    ok = trials[trials["status"] == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter(ok[metric.column] / dense, 100 * ok["proxy_acc"], s=12, alpha=0.6, label="candidates")
    best = trials.loc[[best_row]]
    ax1.scatter(best[metric.column] / dense, 100 * best["proxy_acc"], marker="*", s=200, c="red", label="best")
    if limit is not None:
        ax1.axvline(limit / dense, color="gray", ls="--", label="budget")
    ax1.set_xlabel(f"{metric.axis} / dense")
    ax1.set_ylabel("proxy accuracy (%)")
    ax1.legend()
    feasible = (trials["status"] == "ok") & (trials["within_budget"] == True)
    running = (100 * trials["proxy_acc"].where(feasible)).cummax()
    ax2.plot(range(1, len(trials) + 1), running)
    ax2.set_xlabel("evaluation")
    ax2.set_ylabel("best proxy accuracy within budget (%)")
    return save_figure(fig, run_dir / "trials.png")


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """The candidates no other candidate beats on both proxy accuracy (higher) and FLOPs (lower)."""
    ok = trials[trials["status"] == "ok"].sort_values(["flops", "proxy_acc"], ascending=[True, False])
    front = ok[ok["proxy_acc"] > ok["proxy_acc"].cummax().shift(fill_value=-1.0)]
    return front.reset_index(drop=True)


def plot_pareto(run_dir: Path, trials: pd.DataFrame, dense_flops: float) -> Path:
    """Write ``pareto.csv`` and ``pareto.png``: the accuracy-FLOPs Pareto front of a run."""
    plt = pyplot()
    front = pareto_front(trials)
    front.to_csv(run_dir / "pareto.csv", index=False)
    ok = trials[trials["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(ok["flops"] / dense_flops, 100 * ok["proxy_acc"], s=10, alpha=0.35, label="candidates")
    ax.step(front["flops"] / dense_flops, 100 * front["proxy_acc"], where="post", color="red", marker="o", ms=4, label="Pareto front")
    ax.set_xlabel(f"{FLOPS_LABEL} / dense")
    ax.set_ylabel("proxy accuracy (%)")
    ax.legend()
    return save_figure(fig, run_dir / "pareto.png")


def plot_policy(run_dir: Path, record: PolicyRecord) -> Path:
    """Write ``policy.png``: dense and kept channels of every unit, in network order."""
    plt = pyplot()

    names = list(record.channels)
    dense = [record.channels[n]["dense"] for n in names]
    kept = [record.channels[n]["kept"] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(names) + 2), 4.2))
    ax.bar(range(len(names)), dense, color="lightgray", label="dense")
    ax.bar(range(len(names)), kept, color="tab:blue", label="kept")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(f"{record.model} at {record.budget}: kept channels per unit ({record.found_by.get('method')})")
    ax.legend()
    return save_figure(fig, run_dir / "policy.png")
