"""The run directory: resolved config, ``trials.csv``, ``policy.json``, ``summary.md`` and plots."""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from autoprune.core.cost import FLOPS_LABEL
from autoprune.core.evaluator import Candidate
from autoprune.core.policy import PolicyRecord
from autoprune.errors import ConfigError
from autoprune.plotting import pyplot, save_figure

RUNS_ROOT = Path("results") / "runs"
_TIMINGS = ("prune", "recover", "recalibrate", "score", "cost", "latency", "total")


def new_run_dir(out: str | Path | None, env: str, method: str) -> Path:
    """Create the run directory (``results/runs/<time>-<env>-<method>/`` unless ``out`` is given).

    Raises:
        ConfigError: if ``out`` exists and is not empty.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = RUNS_ROOT / f"{stamp}-{env}-{method}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = RUNS_ROOT / f"{stamp}-{env}-{method}-{suffix}"
    else:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"run directory {str(path)!r} already exists and is not empty; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Write the resolved configuration as ``config.yaml``."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))


def candidate_row(candidate: Candidate, unit_names: Sequence[str]) -> dict[str, Any]:
    """One ``trials.csv`` row: metrics, status, timings, then per-unit ratios and kept channels."""
    meta = dict(candidate.meta)
    sample = meta.pop("sample", {}) or {}
    row: dict[str, Any] = {
        "trial": candidate.index,
        "method": meta.pop("method", ""),
        "status": candidate.status,
        "within_budget": meta.pop("within_budget", None),
        "proxy_acc": candidate.proxy_acc,
        "flops": candidate.flops,
        "params": candidate.params,
        "latency_ms": candidate.latency_ms,
        "cached": candidate.cached,
        "reason": candidate.reason or "",
    }
    row.update({f"time_{k}": candidate.timings.get(k) for k in _TIMINGS})
    row.update({f"ratio:{n}": candidate.policy.get(n, 0.0) for n in unit_names})
    row.update({f"kept:{n}": candidate.kept[n] for n in unit_names})
    row.update({f"sample:{n}": sample[n] for n in unit_names if n in sample})
    row.update({k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))})
    return row


class TrialRecorder:
    """An Evaluator observer that appends every candidate to ``trials.csv`` as it is evaluated.

    Appends are serialised by a file lock, so several worker processes can share one file, and a
    resumed run appends to the rows it already has (under the header it already has). The ``trial``
    column numbers the rows of the file.
    """

    def __init__(self, path: Path, unit_names: Sequence[str]) -> None:
        self.path = path
        self.unit_names = list(unit_names)
        self._columns: list[str] | None = None  # the file's header, once read
        self._rows = 0  # rows counted up to byte offset _counted (only what others appended since is read again)
        self._counted = 0

    def __call__(self, candidate: Candidate) -> None:
        row = candidate_row(candidate, self.unit_names)
        with open(self.path, "a+", newline="") as f:
            _lock(f)
            if self._columns is None:
                f.seek(0)
                first = f.readline()
                self._columns = next(csv.reader([first])) if first else None
                self._counted = f.tell()
            f.seek(self._counted)
            row["trial"] = self._rows = self._rows + sum(1 for _ in csv.reader(f))  # over every worker and resumed run
            header = self._columns is None
            self._columns = self._columns or list(row)
            pd.DataFrame([row]).reindex(columns=self._columns).to_csv(f, header=header, index=False)
            self._rows += 1
            self._counted = f.tell()


def _lock(f: Any) -> None:
    """Hold an exclusive lock on an open file until it is closed (POSIX; elsewhere one writer is assumed)."""
    try:
        import fcntl
    except ImportError:  # Windows: workers there would need a storage-side record only
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def read_trials(path: Path) -> pd.DataFrame:
    """Read ``trials.csv``.

    Raises:
        ConfigError: if the file is missing, empty or not a trials table.
    """
    try:
        trials = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise ConfigError(f"cannot read {str(path)!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if trials.empty or not {"status", "proxy_acc", "flops", "params"} <= set(trials.columns):
        raise ConfigError(f"{str(path)!r} holds no candidates")
    return trials


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
        f"- method: {record.found_by.get('method')}, seed {record.found_by.get('seed')}, "
        f"{record.found_by.get('evaluations')} evaluations recorded; search wall time of this command "
        f"{record.found_by.get('seconds', 0):.1f} s",
        f"- evaluator: {search['evals_per_min']:.1f} evaluations/min of evaluator time, "
        f"{100 * search['overhead_fraction']:.1f}% of it outside the proxy's forward passes",
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
    lines += [
        f"| proxy accuracy ({search['proxy_split']}, BN recalibrated) | {100 * dense['proxy_acc']:.2f}% | "
        f"{100 * m['proxy_acc']:.2f}% | |",
        f"| report accuracy ({search['report_split']}, BN recalibrated) | {100 * dense['report_acc']:.2f}% | "
        f"{100 * m['report_acc']:.2f}% | |",
        "",
        "Dense accuracies are measured exactly like a candidate's (same BN recalibration).",
        "",
        "| unit | dense channels | kept | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, ch in record.channels.items():
        lines.append(f"| `{name}` | {ch['dense']} | {ch['kept']} | {1 - ch['kept'] / ch['dense']:.3f} |")
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")


def plot_trials(run_dir: Path, trials: pd.DataFrame, best_row: Any, flops_limit: float | None, dense_flops: float) -> Path:
    """Write ``trials.png``: proxy accuracy against FLOPs of every candidate (``best_row`` starred), and best-so-far."""
    plt = pyplot()
    ok = trials[trials["status"] == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter(ok["flops"] / dense_flops, 100 * ok["proxy_acc"], s=12, alpha=0.6, label="candidates")
    best = trials.loc[[best_row]]
    ax1.scatter(best["flops"] / dense_flops, 100 * best["proxy_acc"], marker="*", s=200, c="red", label="best")
    if flops_limit is not None:
        ax1.axvline(flops_limit / dense_flops, color="gray", ls="--", label="budget")
    ax1.set_xlabel(f"{FLOPS_LABEL} / dense")
    ax1.set_ylabel("proxy accuracy (%)")
    ax1.legend()
    feasible = (trials["status"] == "ok") & (trials["within_budget"] == True)  # noqa: E712
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
