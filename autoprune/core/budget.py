"""Resource budgets: parsing ``0.5flops`` / ``40MFLOPs`` / ``2.5ms`` and resolving them to a limit."""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoprune.core.metrics import METRICS, get_metric
from autoprune.errors import BudgetError

Metric = str
"""The name of a registered budget metric (:data:`autoprune.core.metrics.METRICS`): flops, params, latency, ..."""

_BUDGET = re.compile(r"^(?P<num>\d*\.?\d+(?:e[+-]?\d+)?)(?P<pct>%?)(?P<unit>[a-z_]+)$")
_EXAMPLES = "0.5flops, 50%flops, 0.6params, 0.7latency, 40MFLOPs, 0.3Mparams, 2.5ms"


@dataclass(frozen=True)
class Budget:
    """A resource budget on the pruned network.

    Attributes:
        metric: a registered metric's name: ``flops`` (multiply-adds, as fvcore counts them), ``params``,
            ``latency``, or one added by :func:`~autoprune.core.metrics.register_metric`.
        value: a fraction of the dense network's cost when ``relative``, otherwise an absolute
            amount in the metric's base unit (FLOPs, parameters, milliseconds).
        relative: whether ``value`` is a fraction of the dense cost.
    """

    metric: Metric
    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse a budget string such as ``0.5flops``, ``40MFLOPs`` or ``2.5ms``.

        Raises:
            BudgetError: if the text is not a budget or its value is out of range.
        """
        compact = text.strip().lower().replace(" ", "")
        m = _BUDGET.match(compact)
        unit = m["unit"] if m else ""
        if m and unit in METRICS:
            value = float(m["num"]) / (100.0 if m["pct"] else 1.0)
            if not 0.0 < value <= 1.0:
                raise BudgetError(
                    f"relative budget {text!r} must keep a fraction in (0, 1] of the dense cost; "
                    f"for an absolute amount write e.g. 40MFLOPs or 2.5ms"
                )
            return cls(unit, value, relative=True)
        if m and not m["pct"]:
            for metric in METRICS.values():
                for spelling, scale in metric.units.items():
                    if spelling.lower() == unit:
                        return cls._absolute(metric.name, float(m["num"]) * scale, text)
        units = "|".join(u for metric in METRICS.values() for u in metric.units)
        raise BudgetError(f"cannot parse budget {text!r}; write it like one of: {_EXAMPLES} (a fraction of the dense "
                          f"cost: <fraction>{'|'.join(METRICS)}; an amount: <number>{units})")

    @classmethod
    def _absolute(cls, metric: Metric, value: float, text: str) -> Budget:
        if value <= 0:
            raise BudgetError(f"budget {text!r} must be positive")
        return cls(metric, value, relative=False)

    def limit(self, dense_cost: float) -> float:
        """The absolute limit (FLOPs, params, ms, ...) for a network whose dense cost is ``dense_cost``."""
        return self.value * dense_cost if self.relative else self.value

    def __str__(self) -> str:
        if self.relative:
            return f"{self.value:g}{self.metric}"
        return get_metric(self.metric).write(self.value)
