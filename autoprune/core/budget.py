"""Resource budgets: parsing ``0.5flops`` / ``40MFLOPs`` / ``2.5ms`` and resolving them to a limit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from autoprune.errors import BudgetError

Metric = Literal["flops", "params", "latency"]

_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_RELATIVE = re.compile(r"^(?P<num>\d*\.?\d+(?:e[+-]?\d+)?)(?P<pct>%?)(?P<metric>flops|params|latency)$")
_ABSOLUTE = re.compile(r"^(?P<num>\d*\.?\d+(?:e[+-]?\d+)?)(?P<scale>[kmgt]?)(?P<metric>flops|macs|params)$")
_TIME = re.compile(r"^(?P<num>\d*\.?\d+(?:e[+-]?\d+)?)(?P<unit>ms|us|s)$")
_EXAMPLES = "0.5flops, 50%flops, 0.6params, 0.7latency, 40MFLOPs, 0.3Mparams, 2.5ms"


@dataclass(frozen=True)
class Budget:
    """A resource budget on the pruned network.

    Attributes:
        metric: ``flops`` (multiply-adds, as fvcore counts them), ``params`` or ``latency``.
        value: a fraction of the dense network's cost when ``relative``, otherwise an absolute
            amount (FLOPs, parameters, or milliseconds).
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
        if m := _RELATIVE.match(compact):
            value = float(m["num"]) / (100.0 if m["pct"] else 1.0)
            if not 0.0 < value <= 1.0:
                raise BudgetError(
                    f"relative budget {text!r} must keep a fraction in (0, 1] of the dense cost; "
                    f"for an absolute amount write e.g. 40MFLOPs or 2.5ms"
                )
            return cls(m["metric"], value, relative=True)  # type: ignore[arg-type]
        if m := _ABSOLUTE.match(compact):
            metric = "params" if m["metric"] == "params" else "flops"
            return cls._absolute(metric, float(m["num"]) * _SCALE[m["scale"]], text)
        if m := _TIME.match(compact):
            ms = float(m["num"]) * {"ms": 1.0, "us": 1e-3, "s": 1e3}[m["unit"]]
            return cls._absolute("latency", ms, text)
        raise BudgetError(f"cannot parse budget {text!r}; write it like one of: {_EXAMPLES}")

    @classmethod
    def _absolute(cls, metric: Metric, value: float, text: str) -> Budget:
        if value <= 0:
            raise BudgetError(f"budget {text!r} must be positive")
        return cls(metric, value, relative=False)

    def limit(self, dense_cost: float) -> float:
        """The absolute limit (FLOPs, params or ms) for a network whose dense cost is ``dense_cost``."""
        return self.value * dense_cost if self.relative else self.value

    def __str__(self) -> str:
        if self.relative:
            return f"{self.value:g}{self.metric}"
        if self.metric == "latency":
            return f"{self.value:g}ms"
        return f"{self.value / 1e6:g}M{'FLOPs' if self.metric == 'flops' else 'params'}"
