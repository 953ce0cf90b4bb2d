"""The Evaluator: policy -> Candidate, on the hot path of every search.

It prunes, recalibrates BatchNorm, scores the proxy split and prices the network. FLOPs and params
come from the calibrated :class:`~autoprune.core.cost.CostModel` (equal to fvcore on the pruned network),
so the only heavy work per candidate is the proxy's forward passes. Repeated channel layouts are
answered from a cache. Every candidate, cached or failed, is passed to the observers (the run's
records).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.core.cost import CostModel, LatencySettings, measure_latency
from autoprune.core.importance import needs_gradients
from autoprune.core.metrics import BudgetMetric, get_metric, recorded_metrics
from autoprune.core.policy import Policy
from autoprune.core.proxy import Proxy
from autoprune.core.prune import Pruner
from autoprune.core.space import SearchSpace

if TYPE_CHECKING:
    import torch_pruning as tp

    from autoprune.core.latency_table import LatencyTable

FAILURES = (RuntimeError, ValueError, IndexError, torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class Candidate:
    """One evaluated policy. Records returned by the Evaluator are never changed afterwards.

    Attributes:
        index: evaluation number (0-based) within the Evaluator.
        policy: the requested ratios.
        kept: channels actually kept per unit (after rounding).
        status: ``ok``, or ``fail`` with ``reason``.
        proxy_acc: proxy accuracy after BN recalibration (None on failure).
        flops: FLOPs (MACs, as fvcore counts them).
        params: parameter count.
        latency_ms: measured latency, when the Evaluator measures it.
        timings: seconds spent in ``prune``, ``recover`` (with a recovery), ``recalibrate``, ``score``, ``cost``,
            ``latency`` and ``total``.
        cached: whether the result was answered from the cache.
        meta: what the searcher attached (method name, raw sample, ...).
        costs: the cost of every registered metric without a field of its own (see
            :func:`~autoprune.core.metrics.register_metric`), keyed by the metric's column.
    """

    index: int
    policy: Policy
    kept: dict[str, int]
    status: str
    proxy_acc: float | None
    flops: int
    params: int
    latency_ms: float | None = None
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the evaluation succeeded."""
        return self.status == "ok"

    def value(self, metric: str | BudgetMetric) -> float | None:
        """The candidate's cost in a registered metric (None where it was not measured)."""
        m = get_metric(metric) if isinstance(metric, str) else metric
        return getattr(self, m.attribute) if m.attribute is not None else self.costs.get(m.column)


class Evaluator:
    """Scores policies of one network on one proxy, with one pruner and one cost model.

    Args:
        model: the dense network (never modified).
        example_inputs: an input batch for tracing and counting FLOPs (batch size 1 is usual).
        space: the search space.
        proxy: the accuracy proxy.
        criterion: channel-selection criterion of the pruner: a registered name or a Torch-Pruning importance
            object; one that needs gradients (``taylor``) takes them on the proxy's calibration images.
        latency: latency settings; when given, every candidate's latency is measured.
        pruner: the pruner to build networks with (default: a new one on ``model``, ``space`` and ``criterion``).
        recovery: applied to every pruned network before scoring (e.g. a
            :class:`~autoprune.core.reconstruct.Reconstructor`); a recovered network keeps the BatchNorm
            statistics the recovery leaves instead of being recalibrated.
        latency_table: a latency lookup table: ``cost_of("latency")`` then predicts from it instead of
            timing each pruned network (a candidate's ``latency_ms`` stays measured when ``latency`` is given).

    Everything an evaluation depends on is given here and never changed afterwards; a searcher that
    needs another recovery works on :meth:`with_recovery`'s copy. ``observers`` (callables that receive
    every candidate: the run's records) may be appended to.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        space: SearchSpace,
        proxy: Proxy,
        criterion: str | tp.importance.Importance = "l1",
        latency: LatencySettings | None = None,
        *,
        pruner: Pruner | None = None,
        recovery: Callable[[nn.Module, Mapping[str, int]], None] | None = None,
        latency_table: LatencyTable | None = None,
    ) -> None:
        self.model = model.eval()
        self.example_inputs = example_inputs
        self.space = space
        self.proxy = proxy
        self.latency = latency
        calibration = proxy.calibration if needs_gradients(criterion) else None
        self.pruner = pruner or Pruner(model, example_inputs, space, criterion, calibration)
        self.pruner.check_prunable()
        self.cost = CostModel(model, example_inputs, space, self.pruner.prune)
        proxy.use_reference(model)
        self.observers: list[Callable[[Candidate], None]] = []
        self.recovery = recovery
        self.latency_table = latency_table
        self._cache: dict[tuple[int, ...], Candidate] = {}
        self._latency_cache: dict[tuple[int, ...], float] = {}
        self.count = 0
        self.seconds = {"total": 0.0, "forward": 0.0}

    def with_recovery(self, recovery: Callable[[nn.Module, Mapping[str, int]], None]) -> Evaluator:
        """A copy that recovers every pruned network with ``recovery``: same network, pruner, cost model, proxy,
        latency settings and observers, its own cache (its scores differ from this Evaluator's)."""
        copy = Evaluator(self.model, self.example_inputs, self.space, self.proxy, self.pruner.criterion, self.latency,
                         pruner=self.pruner, recovery=recovery, latency_table=self.latency_table)
        copy.observers = self.observers
        return copy

    def kept(self, policy: Mapping[str, float]) -> dict[str, int]:
        """Channels each unit keeps under ``policy``."""
        return self.space.kept(policy)

    def build(self, policy: Mapping[str, float]) -> nn.Module:
        """The pruned network of ``policy``, recovered when a recovery is set (BatchNorm not yet recalibrated)."""
        kept = self.kept(policy)
        network = self.pruner.prune(kept)
        if self.recovery is not None:
            self.recovery(network.to(self.proxy.device), kept)
        return network

    def evaluate(self, policy: Policy, meta: Mapping[str, Any] | None = None) -> Candidate:
        """Evaluate ``policy`` and hand the candidate to every observer.

        A failure (an over-pruned layer, a tracing error, out of memory) becomes a candidate with
        status ``fail`` and its reason; it is not raised.
        """
        start = time.perf_counter()
        kept = self.kept(policy)
        key = tuple(kept[n] for n in self.space.names)
        meta = dict(meta or {})
        if key in self._cache:
            hit = self._cache[key]
            candidate = replace(hit, index=self.count, policy=policy, cached=True, meta=meta,
                                timings={"total": time.perf_counter() - start})
        else:
            candidate = self._measure(policy, kept, key, meta, start)
            self._cache[key] = candidate
        self.count += 1
        self.seconds["total"] += candidate.timings.get("total", 0.0)
        self.seconds["forward"] += sum(candidate.timings.get(k, 0.0) for k in ("recover", "recalibrate", "score"))
        for observer in self.observers:
            observer(candidate)
        return candidate

    def remember(self, candidate: Candidate) -> None:
        """Take a candidate evaluated before (a resumed run's record) as if this Evaluator had scored it: later
        evaluations of its kept channels are cache hits, and new candidates are numbered after it. Observers are
        not called (it is already recorded)."""
        self._cache.setdefault(tuple(candidate.kept[n] for n in self.space.names), candidate)
        self.count = max(self.count, candidate.index + 1)

    def _measure(self, policy: Policy, kept: dict[str, int], key: tuple[int, ...], meta: dict[str, Any], start: float) -> Candidate:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        flops, params = self.cost.flops(kept), self.cost.params(kept)
        costs = {m.column: m.cost(self)(kept) for m in recorded_metrics()}
        timings["cost"] = time.perf_counter() - t
        base = dict(index=self.count, policy=policy, kept=kept, flops=flops, params=params, meta=meta, costs=costs)
        try:
            t = time.perf_counter()
            network = self.pruner.prune(kept)
            timings["prune"] = time.perf_counter() - t
            if self.recovery is not None:
                t = time.perf_counter()
                self.recovery(network.to(self.proxy.device), kept)
                timings["recover"] = time.perf_counter() - t
            score = self.proxy.score(network, recalibrate=self.recovery is None)
            timings["recalibrate"], timings["score"] = score.recalibrate_s, score.score_s
            latency = None
            if self.latency is not None:
                t = time.perf_counter()
                latency = self._latency(network, key)
                timings["latency"] = time.perf_counter() - t
        except FAILURES as e:
            timings["total"] = time.perf_counter() - start
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            return Candidate(**base, status="fail", proxy_acc=None, reason=reason, timings=timings)
        timings["total"] = time.perf_counter() - start
        return Candidate(**base, status="ok", proxy_acc=score.accuracy, latency_ms=latency, timings=timings)

    def _latency(self, network: nn.Module, key: tuple[int, ...]) -> float:
        if key not in self._latency_cache:
            settings = self.latency or LatencySettings()
            shape = (settings.batch_size, *self.example_inputs.shape[1:])
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            self._latency_cache[key] = measure_latency(
                network, x, settings.device, settings.repeats, settings.warmup, settings.threads
            )
        return self._latency_cache[key]

    def measured_latency(self, kept: Mapping[str, int]) -> float:
        """Latency (ms) of the network keeping ``kept`` channels, measured once per layout on this device."""
        key = tuple(kept.get(n, self.space.unit(n).channels) for n in self.space.names)
        if key not in self._latency_cache:
            self._latency(self.pruner.prune(kept), key)
        return self._latency_cache[key]

    def cost_of(self, metric: str) -> Callable[[Mapping[str, int]], float]:
        """A function from kept channels to the cost in a registered metric: ``flops``, ``params``, ``latency``
        (ms: predicted by the latency table when one is set, otherwise measured), ...

        Raises:
            ConfigError: for a metric that is not registered.
        """
        return get_metric(metric).cost(self)

    def dense_cost(self, metric: str) -> float:
        """Cost of the dense network in a registered ``metric``."""
        return get_metric(metric).dense_cost(self)

    @property
    def overhead_fraction(self) -> float:
        """Share of evaluation time spent outside the proxy's forward passes (recalibration and scoring)."""
        total = self.seconds["total"]
        return 0.0 if total == 0 else 1.0 - self.seconds["forward"] / total
