"""Layer sensitivity: proxy accuracy with one unit pruned at a time, over a grid of ratios.

Every point is scored by the Evaluator (pruning, BatchNorm recalibration, proxy split), like any
candidate. A scan is cached under ``cache_dir()/sensitivity/<key>.csv``, keyed by the network's
architecture and weights, the proxy's data and settings, the channel criterion and recovery, the
searched units with their bounds, and the ratio grid; a second scan with the same key evaluates
nothing. Scan points are not search candidates: they are recorded in ``sensitivity.csv``, not in a
run's ``trials.csv``.

With a storage (``autoprune sensitivity --storage URL`` on several machines, or the workers of a search
with ``--prior sensitivity``) the grid is a set of tasks of the study ``sensitivity-<key>``
(:func:`~autoprune.trials.study.enqueue_tasks`): enqueued once, filled by every worker, each point scored
once; each worker then reads the whole table from the study, and the cache is written once.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autoprune.core.cost import FLOPS_LABEL
from autoprune.core.evaluator import Evaluator
from autoprune.core.policy import Policy
from autoprune.errors import ConfigError
from autoprune.io import atomic_write
from autoprune.plotting import pyplot, save_figure
from autoprune.trials.study import claim, done_tasks, enqueue_tasks, open_study, reap_dead_trials
from autoprune.zoo.images import cache_dir

DEFAULT_RATIOS = "0.1:0.9:0.1"
COLUMNS = ("unit", "ratio", "kept", "channels", "accuracy", "flops", "flops_saved", "params")
_NUMBER = r"-?\d*\.?\d+(?:e[+-]?\d+)?"


def parse_grid(text: str, what: str = "ratio grid") -> tuple[float, ...]:
    """Parse a grid of numbers: ``start:stop:step`` (stop included) or a comma list such as ``0.2,0.5,0.8``,
    sorted and without repeats.

    Raises:
        ConfigError: if the text is malformed (``what`` names the grid in the message).
    """
    compact = str(text).strip().replace(" ", "")
    if m := re.fullmatch(rf"({_NUMBER}):({_NUMBER}):({_NUMBER})", compact):
        start, stop, step = (float(g) for g in m.groups())
        if step <= 0 or stop < start:
            raise ConfigError(f"{what} {text!r} must be start:stop:step with step > 0 and start <= stop")
        return tuple(round(start + i * step, 10) for i in range(int(math.floor((stop - start) / step + 1e-9)) + 1))
    if re.fullmatch(rf"{_NUMBER}(,{_NUMBER})*", compact):
        return tuple(sorted({float(v) for v in compact.split(",")}))
    raise ConfigError(f"cannot parse {what} {text!r}; write start:stop:step (0.1:0.9:0.1) or a list (0.2,0.5,0.8)")


def parse_ratios(text: str) -> tuple[float, ...]:
    """Parse a ratio grid (see :func:`parse_grid`).

    Raises:
        ConfigError: if the text is malformed, or a ratio is outside (0, 1).
    """
    ratios = parse_grid(text)
    bad = [r for r in ratios if not 0.0 < r < 1.0]
    if bad:
        raise ConfigError(f"ratio grid {text!r} has ratios outside (0, 1): {bad}; a ratio is the fraction of channels removed")
    return ratios


@dataclass(frozen=True)
class SensitivityTable:
    """A sensitivity scan: one row per (unit, ratio), plus each unit's dense row at ratio 0.

    Attributes:
        frame: the tidy table (:data:`COLUMNS`); ``accuracy`` is NaN where the evaluation failed.
        ratios: the ratio grid.
        path: the cache file.
        evaluations: evaluations this scan made (0 when read from the cache).
        dense_accuracy: proxy accuracy of the dense network (BN recalibrated like every candidate).
    """

    frame: pd.DataFrame
    ratios: tuple[float, ...]
    path: Path | None = None
    evaluations: int = 0
    dense_accuracy: float = field(default=float("nan"), init=False)
    _curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense_accuracy", float(self.frame.loc[self.frame["ratio"] == 0.0, "accuracy"].iloc[0]))
        ok = self.frame[self.frame["accuracy"].notna()]
        for unit, rows in ok.groupby("unit", sort=False):
            points = rows.groupby("kept")["accuracy"].mean().sort_index()
            self._curves[str(unit)] = (points.index.to_numpy(dtype=np.float64), points.to_numpy(dtype=np.float64))

    @property
    def units(self) -> list[str]:
        """Unit names in network order."""
        return list(dict.fromkeys(self.frame["unit"]))

    def curve(self, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """Kept counts (ascending) and their proxy accuracy for one unit; failed points left out."""
        return self._curves[unit]

    def drop(self, unit: str, kept: int) -> float:
        """Predicted accuracy drop when only ``unit`` keeps ``kept`` channels (linear in kept between points)."""
        ks, acc = self.curve(unit)
        return self.dense_accuracy - float(np.interp(kept, ks, acc))

    def lowest_kept(self, unit: str) -> int:
        """Fewest channels the scan measured for ``unit``."""
        return int(self.curve(unit)[0][0])


def scan_key(evaluator: Evaluator, ratios: tuple[float, ...]) -> str:
    """Cache key of a scan: architecture and weights, proxy data and settings, criterion, recovery, units, grid."""
    digest = hashlib.sha256()
    for name, tensor in evaluator.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    proxy = evaluator.proxy
    for tensor in (proxy.images, proxy.targets, *proxy.calibration):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    doc = {
        "architecture": str(evaluator.model), "input": list(evaluator.example_inputs.shape[1:]),
        "proxy": [proxy.kind, proxy.batch_size], "criterion": evaluator.pruner.criterion,
        "recovery": type(evaluator.recovery).__name__ if evaluator.recovery is not None else None,
        "units": [[u.name, u.channels, u.min_ratio, u.max_ratio, u.round_to] for u in evaluator.space.units],
        "ratios": list(ratios),
    }
    digest.update(json.dumps(doc, sort_keys=True).encode())
    return digest.hexdigest()[:20]


@contextmanager
def unrecorded(evaluator: Evaluator) -> Iterator[None]:
    """Evaluate without the Evaluator's observers (scan points are not search candidates)."""
    observers = list(evaluator.observers)
    evaluator.observers.clear()
    try:
        yield
    finally:
        evaluator.observers[:] = observers


def scan(
    evaluator: Evaluator,
    ratios: tuple[float, ...],
    cache: bool = True,
    on_point: Callable[[int, int], None] | None = None,
    storage: optuna.storages.BaseStorage | None = None,
) -> SensitivityTable:
    """Prune one unit at a time at every ratio and score it; read from or write to the cache.

    A ratio beyond a unit's bounds is clipped to them, as for any policy (the ``kept`` column shows
    what was scored; widen the search space's ``max_ratio`` to scan further).

    Args:
        evaluator: the Evaluator that scores every point (its observers are not called).
        ratios: the grid, each in (0, 1).
        cache: read a cached scan with the same key, and write this one.
        on_point: called as ``on_point(done, total)`` after each evaluation.
        storage: share the grid with the other workers on this storage.
    """
    key = scan_key(evaluator, ratios)
    path = cache_dir() / "sensitivity" / f"{key}.csv"
    if cache and path.is_file():
        return SensitivityTable(pd.read_csv(path), ratios, path, evaluations=0)
    points = [(unit.name, ratio) for unit in evaluator.space.units for ratio in ratios]
    with unrecorded(evaluator):
        if storage is None:
            scored, evaluations = _scan_here(evaluator, points, on_point), 1 + len(points)
        else:
            scored, evaluations = _scan_shared(evaluator, points, storage, open_study(storage, f"sensitivity-{key}"),
                                               on_point)
    rows = []
    for unit in evaluator.space.units:
        rows.append(_row(unit.name, 0.0, unit.channels, scored[None]))
        rows.extend(_row(unit.name, ratio, unit.channels, scored[(unit.name, ratio)]) for ratio in ratios)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if cache and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    return SensitivityTable(frame, ratios, path if cache else None, evaluations=evaluations)


Point = tuple[str, float]
Scored = dict[Point | None, dict[str, Any]]  # a point (None: the dense network) -> what its row records


def _score(evaluator: Evaluator, point: Point | None) -> dict[str, Any]:
    """Score one point of the grid (None: the dense network)."""
    if point is None:
        candidate = evaluator.evaluate(Policy({}), {"method": "sensitivity-scan"})
    else:
        unit, ratio = point
        candidate = evaluator.evaluate(Policy({unit: min(ratio, evaluator.space.unit(unit).max_ratio)}),
                                       {"method": "sensitivity-scan", "unit": unit, "ratio": ratio})
    return {"kept": dict(candidate.kept), "accuracy": candidate.proxy_acc if candidate.ok else None,
            "flops": candidate.flops, "flops_saved": evaluator.cost.dense_flops - candidate.flops,
            "params": candidate.params}


def _scan_here(evaluator: Evaluator, points: list[Point], on_point: Callable[[int, int], None] | None) -> Scored:
    scored: Scored = {}
    for i, point in enumerate([None, *points]):
        scored[point] = _score(evaluator, point)
        if on_point is not None:
            on_point(i + 1, 1 + len(points))
    return scored


def _scan_shared(evaluator: Evaluator, points: list[Point], storage: optuna.storages.BaseStorage, study: optuna.Study,
                 on_point: Callable[[int, int], None] | None) -> tuple[Scored, int]:
    """Fill the grid with the other workers of ``study``; returns every point and how many were scored here."""
    tasks = {_task(p): ({}, {"point": list(p) if p else None}) for p in [None, *points]}
    enqueue_tasks(study, tasks)
    here = 0

    def work(trial: optuna.Trial) -> float:
        nonlocal here
        point = trial.user_attrs.get("point")
        scored = _score(evaluator, None if point is None else (str(point[0]), float(point[1])))
        trial.set_user_attr("scored", scored)
        here += 1
        return scored["accuracy"] if scored["accuracy"] is not None else -1.0

    while True:
        trials = study.get_trials(deepcopy=False)
        done = done_tasks(trials)
        if on_point is not None:
            on_point(len(done), len(tasks))
        if set(tasks) <= done:
            break
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            claim(study, work, tasks_only=True)
        else:
            time.sleep(1.0)  # the last points are scored by other workers (or their worker died: settled here)
            reap_dead_trials(study, storage)
    owners = {t.user_attrs["task"]: t for t in study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.COMPLETE and "scored" in t.user_attrs}
    return {p: owners[_task(p)].user_attrs["scored"] for p in [None, *points]}, here


def _task(point: Point | None) -> str:
    return "dense" if point is None else f"{point[0]} at {point[1]:g}"


def _row(unit: str, ratio: float, channels: int, scored: dict[str, Any]) -> dict[str, Any]:
    accuracy = scored["accuracy"]
    return {"unit": unit, "ratio": ratio, "kept": scored["kept"][unit], "channels": channels,
            "accuracy": float("nan") if accuracy is None else accuracy, "flops": scored["flops"],
            "flops_saved": scored["flops_saved"], "params": scored["params"]}


def write_outputs(table: SensitivityTable, out: Path, title: str) -> list[Path]:
    """Write ``sensitivity.csv``, ``sensitivity_curves.png`` and ``sensitivity_heatmap.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "sensitivity.csv"
    table.frame.to_csv(csv, index=False)
    return [csv, plot_curves(table, out / "sensitivity_curves.png", title),
            plot_heatmap(table, out / "sensitivity_heatmap.png", title)]


def plot_curves(table: SensitivityTable, path: Path, title: str) -> Path:
    """Proxy accuracy against the ratio pruned from each unit alone (one curve per unit, network order)."""
    plt = pyplot()
    units = table.units
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.95, len(units)))
    for unit, colour in zip(units, colours):
        rows = table.frame[table.frame["unit"] == unit].sort_values("ratio")
        achieved = 1.0 - rows["kept"] / rows["channels"]
        ax.plot(achieved, 100 * rows["accuracy"], marker="o", ms=3, lw=1.2, color=colour, label=unit)
    ax.axhline(100 * table.dense_accuracy, color="gray", ls="--", lw=1, label="dense")
    ax.set_xlabel("pruning ratio of the unit alone (fraction of channels removed, after rounding)")
    ax.set_ylabel("proxy accuracy (%), BN recalibrated")
    ax.set_title(f"{title}: layer sensitivity")
    if len(units) <= 12:
        ax.legend(fontsize=7, ncol=2)
    else:
        mappable = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, len(units) - 1))
        fig.colorbar(mappable, ax=ax, label="unit index (network order)")
    return save_figure(fig, path)


def plot_heatmap(table: SensitivityTable, path: Path, title: str) -> Path:
    """Units x ratios heatmap of the proxy accuracy drop (percentage points) when one unit is pruned."""
    plt = pyplot()
    units, ratios = table.units, list(table.ratios)
    grid = table.frame[table.frame["ratio"] > 0].pivot_table(index="unit", columns="ratio", values="accuracy")
    drop = 100 * (table.dense_accuracy - grid.reindex(index=units, columns=ratios).to_numpy())
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(ratios) + 3), max(3.0, 0.28 * len(units) + 1.5)))
    image = ax.imshow(drop, aspect="auto", cmap="magma_r", vmin=0)
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(units)), units, fontsize=7)
    ax.set_xlabel("pruning ratio of the unit alone (as requested; clipped to the unit's max_ratio)")
    ax.set_title(f"{title}: proxy accuracy drop (points)", fontsize=10)
    if drop.size <= 400:
        for (i, j), value in np.ndenumerate(drop):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6,
                        color="white" if value > 0.6 * np.nanmax(drop) else "black")
    fig.colorbar(image, ax=ax, label="accuracy drop (points)")
    return save_figure(fig, path)


def summary_line(table: SensitivityTable) -> str:
    """One line naming the most and least sensitive units at the largest ratio of the grid."""
    top = table.frame[table.frame["ratio"] == max(table.ratios)].dropna(subset=["accuracy"])
    if top.empty:
        return "no point of the scan could be scored"
    worst, best = top.loc[top["accuracy"].idxmin()], top.loc[top["accuracy"].idxmax()]
    return (f"dense proxy accuracy {100 * table.dense_accuracy:.2f}%; at ratio {max(table.ratios):g} the most sensitive "
            f"unit is {worst['unit']} ({100 * worst['accuracy']:.2f}%), the least {best['unit']} "
            f"({100 * best['accuracy']:.2f}%); {FLOPS_LABEL} saved are in the flops_saved column")
