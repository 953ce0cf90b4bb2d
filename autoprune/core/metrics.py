"""The registry of budget metrics: each resource a budget can limit is defined here, once.

A :class:`BudgetMetric` says how budgets spell it (``0.5flops`` relative to the dense network, ``40MFLOPs``
absolute), how it is shown, which ``trials.csv`` column holds it, how an
:class:`~autoprune.core.evaluator.Evaluator` prices the dense network and any kept-channel layout, and
whether projection can fill leftover budget one channel step at a time. The budget parser, the
Evaluator's ``cost_of``/``dense_cost``, projection, the run's records, summary and plots all read it
from :data:`METRICS`.

Adding a metric is one :func:`register_metric` call::

    register_metric(BudgetMetric(
        name="channels", label="channels", column="channels",
        cost=lambda evaluator: lambda kept: sum(kept.values()),
    ))

after which ``--budget 0.5channels`` searches with it and every candidate's ``channels`` is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoprune.core.cost import FLOPS_LABEL
from autoprune.errors import ConfigError

Evaluator = Any  # an autoprune.core.evaluator.Evaluator, not imported: the Evaluator reads this registry

CostFn = Callable[[Mapping[str, int]], float]


@dataclass(frozen=True, eq=False)
class BudgetMetric:
    """One resource a budget can limit.

    Attributes:
        name: the metric's name; a relative budget is spelled ``<fraction><name>`` or ``<percent>%<name>``
            (``0.5flops``, ``50%flops``), and ``--objectives acc,<name>`` minimises it.
        label: its unit for messages and summaries (``FLOPs (MACs, fvcore)``, ``params``, ``ms``).
        column: the ``trials.csv`` column (and study user attribute) holding a candidate's value.
        cost: ``cost(evaluator)`` is a function from kept channels per unit to the cost, non-decreasing in
            each count.
        dense: ``dense(evaluator)`` is the dense network's cost (default: ``cost`` at every unit's channels).
        units: absolute spellings, suffix -> how many of the metric one of it is (``{"MFLOPs": 1e6}``);
            matched case-insensitively, so ``40mflops`` is ``40MFLOPs``.
        exact: whether a kept-channel layout's cost is known exactly and cheaply before evaluating it, so that
            projection fills leftover budget one channel step at a time; a callable decides per Evaluator
            (latency is exact only when a lookup table prices it).
        measured: whether candidates measure it on the device (latency): it needs latency settings, is noisy,
            and the environment and exact-cost-only methods cannot take it.
        attribute: the :class:`~autoprune.core.evaluator.Candidate` field holding its value (``flops``,
            ``params``, ``latency_ms``); None: the Evaluator records it in ``Candidate.costs[column]``
            (unless it is measured).
        display_unit: the key of ``units`` an absolute budget is written back in (default: the first).
        show: formats an amount with its unit (default ``<value> <label>``).
        title: the name on plot axes (default ``label``).
    """

    name: str
    label: str
    column: str
    cost: Callable[[Evaluator], CostFn]
    dense: Callable[[Evaluator], float] | None = None
    units: Mapping[str, float] = field(default_factory=dict)
    exact: bool | Callable[[Evaluator], bool] = True
    measured: bool = False
    attribute: str | None = None
    display_unit: str | None = None
    show: Callable[[float], str] | None = None
    title: str | None = None

    def dense_cost(self, evaluator: Evaluator) -> float:
        """The dense network's cost."""
        if self.dense is not None:
            return self.dense(evaluator)
        return self.cost(evaluator)({u.name: u.channels for u in evaluator.space.units})

    def is_exact(self, evaluator: Evaluator) -> bool:
        """Whether projection may fill leftover budget channel by channel on ``evaluator``."""
        return bool(self.exact(evaluator) if callable(self.exact) else self.exact)

    @property
    def recorded(self) -> bool:
        """Whether the Evaluator records it in ``Candidate.costs`` (it has no field of its own and is cheap)."""
        return self.attribute is None and not self.measured

    def format(self, value: float) -> str:
        """``value`` with its unit, for messages."""
        return self.show(value) if self.show is not None else f"{value:,.4g} {self.label}"

    def write(self, value: float) -> str:
        """An absolute amount as a budget string that parses back to it (``40MFLOPs``)."""
        if not self.units:
            return f"{value:g}"
        unit = self.display_unit or next(iter(self.units))
        return f"{value / self.units[unit]:g}{unit}"

    @property
    def axis(self) -> str:
        """Its name on plot axes."""
        return self.title or self.label


METRICS: dict[str, BudgetMetric] = {}
"""Every registered metric by name, in registration order."""

RESERVED_COLUMNS = frozenset({"trial", "method", "status", "within_budget", "proxy_acc", "cached", "reason", "ratios",
                              "kept", "evaluation", "sample", "worker", "surplus", "chosen",
                              "task"})
"""Names of ``trials.csv`` columns and study attributes that a metric's column must not take."""


def _spellings(metric: BudgetMetric) -> set[str]:
    return {metric.name.lower(), *(u.lower() for u in metric.units)}


def register_metric(metric: BudgetMetric) -> BudgetMetric:
    """Add ``metric`` to :data:`METRICS` (returns it).

    Raises:
        ConfigError: if its name, one of its spellings or its column is taken by a registered metric, or a
            spelling is not lower-case letters and underscores.
    """
    if metric.name in METRICS:
        raise ConfigError(f"budget metric {metric.name!r} is already registered")
    bad = [s for s in (metric.name, *metric.units) if not s or not all(c.isalpha() or c == "_" for c in s)]
    if bad or metric.name != metric.name.lower():
        raise ConfigError(f"budget metric {metric.name!r}: its name must be lower-case and every spelling letters or "
                          f"underscores")
    if metric.column in RESERVED_COLUMNS or ":" in metric.column or metric.column.startswith("time_"):
        raise ConfigError(f"budget metric {metric.name!r}: column {metric.column!r} is one the records already use")
    for other in METRICS.values():
        taken = _spellings(metric) & _spellings(other)
        if taken:
            raise ConfigError(f"budget metric {metric.name!r}: {', '.join(sorted(taken))} already spell{'s' if len(taken) == 1 else ''} "
                              f"{other.name!r}")
        if metric.column == other.column:
            raise ConfigError(f"budget metric {metric.name!r}: column {metric.column!r} already holds {other.name!r}")
    if metric.display_unit is not None and metric.display_unit not in metric.units:
        raise ConfigError(f"budget metric {metric.name!r}: display_unit {metric.display_unit!r} is not one of its units")
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> BudgetMetric:
    """The registered metric called ``name``.

    Raises:
        ConfigError: for an unknown name (listing the registered ones).
    """
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown budget metric {name!r}; choose one of {', '.join(METRICS)}") from None


def recorded_metrics() -> list[BudgetMetric]:
    """The metrics the Evaluator records in every candidate's ``costs``."""
    return [m for m in METRICS.values() if m.recorded]


def _si(base: str) -> dict[str, float]:
    return {f"{p}{base}": s for p, s in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12))}


def _latency_cost(evaluator: Evaluator) -> CostFn:
    return evaluator.latency_table.predict if evaluator.latency_table is not None else evaluator.measured_latency


register_metric(BudgetMetric(
    name="flops", label=FLOPS_LABEL, column="flops", attribute="flops",
    cost=lambda e: e.cost.flops,
    units={**_si("FLOPs"), "MACs": 1.0, **_si("MACs")}, display_unit="MFLOPs",
    show=lambda v: f"{v / 1e6:.4g}M FLOPs (MACs)",
))
register_metric(BudgetMetric(
    name="params", label="params", column="params", attribute="params",
    cost=lambda e: e.cost.params,
    units=_si("params"), display_unit="Mparams",
    show=lambda v: f"{v / 1e6:.4g}M params",
))
register_metric(BudgetMetric(
    name="latency", label="ms", column="latency_ms", attribute="latency_ms",
    cost=_latency_cost,
    units={"ms": 1.0, "us": 1e-3, "s": 1e3}, display_unit="ms",
    exact=lambda e: e.latency_table is not None, measured=True,
    show=lambda v: f"{v:.4g} ms", title="latency (ms)",
))
