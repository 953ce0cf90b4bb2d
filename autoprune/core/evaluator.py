"""The Evaluator: policy -> Candidate, on the hot path of every search.

It prunes, recalibrates BatchNorm, scores the proxy split and prices the network. FLOPs and params
come from the calibrated :class:`~autoprune.core.cost.CostModel` (equal to fvcore on the pruned network),
so the only heavy work per candidate is the proxy's forward passes. Repeated channel layouts are
answered from a cache. Every candidate, cached or failed, is passed to the observers (the run's
records).

A candidate can be scored in stages (:meth:`Evaluator.start` gives a :class:`Scoring` that scores growing
prefixes of the proxy split): racing (:mod:`autoprune.core.racing`) stops a candidate that cannot beat the
incumbent, and the evolutionary searcher selects offspring on growing slices.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
from autoprune.core.racing import Racing
from autoprune.core.space import SearchSpace
from autoprune.zoo.images import ImageSet

if TYPE_CHECKING:
    import torch_pruning as tp

    from autoprune.core.latency_table import LatencyTable

FAILURES = (Exception,)
"""What a candidate's evaluation may raise and still be recorded as a failed candidate (a user's network may raise
anything; NaN or infinite outputs raise :class:`~autoprune.core.proxy.NonFiniteOutput`)."""


@dataclass(frozen=True)
class Candidate:
    """One evaluated policy. Records returned by the Evaluator are never changed afterwards.

    Attributes:
        index: evaluation number (0-based) within the Evaluator.
        policy: the requested ratios.
        kept: channels actually kept per unit (after rounding).
        status: ``ok`` (scored on every proxy image), ``stopped`` (raced out: scored on ``fidelity`` images and
            found unable to beat the incumbent), or ``fail`` with ``reason``.
        proxy_acc: proxy accuracy after BN recalibration, on the ``fidelity`` images scored (None on failure).
        flops: FLOPs (MACs, as fvcore counts them).
        params: parameter count.
        latency_ms: measured latency, when the Evaluator measures it.
        timings: seconds spent in ``prune``, ``recover`` (with a recovery), ``recalibrate``, ``score``, ``cost``,
            ``latency`` and ``total``.
        cached: whether the result was answered from the cache.
        meta: what the searcher attached (method name, raw sample, ...).
        costs: the cost of every registered metric without a field of its own (see
            :func:`~autoprune.core.metrics.register_metric`), keyed by the metric's column.
        fidelity: proxy images scored (None on failure).
        curve: proxy accuracy after each stage scored, keyed by the number of images (racing's intermediate values).
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
    fidelity: int | None = None
    curve: dict[int, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the evaluation succeeded on every proxy image."""
        return self.status == "ok"

    @property
    def stopped(self) -> bool:
        """Whether racing stopped it before every proxy image was scored."""
        return self.status == "stopped"

    def value(self, metric: str | BudgetMetric) -> float | None:
        """The candidate's cost in a registered metric (None where it was not measured)."""
        m = get_metric(metric) if isinstance(metric, str) else metric
        return getattr(self, m.attribute) if m.attribute is not None else self.costs.get(m.column)


class Scoring:
    """A candidate being scored: built once, then scored on growing prefixes of the proxy split.

    Get one from :meth:`Evaluator.start`; :meth:`advance` scores more images, :meth:`loses_to` races it against an
    incumbent, :meth:`finish` records it (as ``ok`` once every image is scored, ``stopped`` before) and hands it to
    the Evaluator's observers. A failure while building or scoring ends it as a ``fail`` candidate.
    """

    def __init__(self, evaluator: Evaluator, policy: Policy, kept: dict[str, int], meta: dict[str, Any],
                 start: float, known: torch.Tensor | None = None, cached: Candidate | None = None) -> None:
        self.evaluator = evaluator
        self.policy, self.kept, self.meta = policy, kept, meta
        self.key = evaluator.key(kept)
        self.hits = known if known is not None else torch.zeros(0, dtype=torch.bool)
        self.curve: dict[int, float] = dict(cached.curve) if cached is not None else {}
        self.reason: str | None = None
        self.timings: dict[str, float] = {}
        self._start = start
        self._raw: nn.Module | None = None  # the pruned network, BatchNorm recalibrated on _batches batches
        self._network: nn.Module | None = None  # _raw prepared for scoring (folded on the fast path)
        self._batches = 0
        self._hits_batches = self._all_batches  # the recalibration batches behind self.hits (known hits: all)
        self._cached = cached
        if cached is None:
            t = time.perf_counter()
            self.flops, self.params = evaluator.cost.flops(kept), evaluator.cost.params(kept)
            self.costs = {m.column: m.cost(evaluator)(kept) for m in recorded_metrics()}
            self.timings["cost"] = time.perf_counter() - t
        else:
            self.flops, self.params, self.costs = cached.flops, cached.params, dict(cached.costs)

    @property
    def fidelity(self) -> int:
        """Proxy images scored so far."""
        return len(self.hits)

    @property
    def complete(self) -> bool:
        """Whether every proxy image is scored."""
        return self.fidelity >= len(self.evaluator.proxy)

    @property
    def failed(self) -> bool:
        """Whether building or scoring failed."""
        return self.reason is not None

    @property
    def estimate(self) -> float | None:
        """Proxy accuracy on the images scored so far (None before any, or on failure)."""
        return None if self.failed or not self.fidelity else self.hits.float().mean().item()

    def advance(self, images: int | None = None) -> float | None:
        """Score up to the first ``images`` proxy images (default: all of them); returns :attr:`estimate`."""
        proxy = self.evaluator.proxy
        images = len(proxy) if images is None else min(images, len(proxy))
        if self.failed or (images <= self.fidelity and self._hits_batches >= self._batches_for(images)):
            return self.estimate
        try:
            network = self._prepared(self._batches_for(images))
            if self._hits_batches != self._batches:  # scored with fewer batches before: score again from the start
                self.hits, self._hits_batches = torch.zeros(0, dtype=torch.bool), self._batches
            t = time.perf_counter()
            more = proxy.correct(network, self.fidelity, images)
            self.timings["score"] = self.timings.get("score", 0.0) + time.perf_counter() - t
        except FAILURES as e:
            self._fail(e)
            return None
        self.hits = torch.cat([self.hits, more.cpu()])
        self.curve[self.fidelity] = self.estimate  # type: ignore[assignment]
        return self.estimate

    def hits_on(self, proxy: Proxy, images: int | None = None, known: torch.Tensor | None = None) -> torch.Tensor | None:
        """Whether the candidate's network gets each of the first ``images`` images of another proxy right (``proxy``:
        the same proxy on other images, e.g. :meth:`Proxy.subset`; default: all of them); None once it failed. The
        network is ready as for a score on ``images`` of the Evaluator's proxy images (an early racing stage: its
        early recalibration batches; default: all batches). ``known``: the hits this call gave before on the first
        images of ``proxy``; they are kept, and only the images after them scored, unless the network is recalibrated
        further now. These hits are not its proxy score: :attr:`fidelity` and :attr:`estimate` stay those of the
        Evaluator's proxy images."""
        if self.failed:
            return None
        stop = len(proxy) if images is None else images
        try:
            before = self._batches
            network = self._prepared(self._batches_for(len(self.evaluator.proxy) if images is None else images))
            start = len(known) if known is not None and self._batches == before else 0
            t = time.perf_counter()
            hits = proxy.correct(network, start, stop).cpu()
            self.timings["score"] = self.timings.get("score", 0.0) + time.perf_counter() - t
        except FAILURES as e:
            self._fail(e)
            return None
        return torch.cat([known[:start], hits]) if known is not None and start else hits

    def loses_to(self, incumbent: torch.Tensor, racing: Racing) -> bool:
        """Whether, on the images scored so far, it cannot beat an incumbent with per-image hits ``incumbent``."""
        return not self.failed and not self.complete and racing.loses(self.hits, incumbent, len(self.evaluator.proxy))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count in the candidate's time (held unfinished while waiting on others)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - began

    def finish(self) -> Candidate:
        """Record the candidate (``ok`` when every image is scored, ``stopped`` before, ``fail`` on failure), keep
        it in the Evaluator's cache and hand it to the observers."""
        ev = self.evaluator
        latency = None
        if not self.failed and self.complete and ev.latency is not None:
            t = time.perf_counter()
            try:
                latency = ev.measured_latency(self.kept)
            except FAILURES as e:
                self._fail(e)
            self.timings["latency"] = time.perf_counter() - t
        self.timings["total"] = time.perf_counter() - self._start
        status = "fail" if self.failed else "ok" if self.complete else "stopped"
        candidate = Candidate(
            index=ev.count, policy=self.policy, kept=self.kept, status=status, proxy_acc=self.estimate,
            flops=self.flops, params=self.params, latency_ms=latency, reason=self.reason, timings=self.timings,
            cached=self._cached is not None and self.fidelity <= (self._cached.fidelity or 0), meta=self.meta,
            costs=self.costs, fidelity=None if self.failed else self.fidelity, curve=dict(self.curve))
        if self._cached is not None and self._cached.ok and latency is None:
            candidate = replace(candidate, latency_ms=self._cached.latency_ms)
        ev.keep(candidate, None if self.failed or self._hits_batches < self._all_batches else self.hits)
        self._network = self._raw = None
        ev.count += 1
        ev.seconds["total"] += self.timings["total"]
        ev.seconds["forward"] += sum(self.timings.get(k, 0.0) for k in ("recover", "recalibrate", "score"))
        for observer in ev.observers:
            observer(candidate)
        return candidate

    @property
    def _all_batches(self) -> int:
        """Recalibration batches of a full evaluation (0 with a recovery, which keeps its own statistics)."""
        return 0 if self.evaluator.recovery is not None else len(self.evaluator.proxy.calibration)

    def _batches_for(self, images: int) -> int:
        """Recalibration batches behind a score on ``images`` images: the racing's early batches before the last
        stage, all of them on the last."""
        racing = self.evaluator.racing
        if racing is None or images >= len(self.evaluator.proxy):
            return self._all_batches
        return racing.batches_before_last(self._all_batches)

    def _prepared(self, batches: int) -> nn.Module:
        """The pruned network, recovered or BN-recalibrated on (at least) ``batches`` batches, ready to score."""
        ev = self.evaluator
        if self._raw is None:
            t = time.perf_counter()
            self._raw = ev.pruner.prune(self.kept)
            self.timings["prune"] = time.perf_counter() - t
            if ev.recovery is not None:
                t = time.perf_counter()
                ev.recovery(self._raw.to(ev.proxy.device), self.kept)
                self.timings["recover"] = time.perf_counter() - t
        if self._network is None or batches > self._batches:
            t = time.perf_counter()
            if ev.recovery is not None:  # its statistics are kept: only made ready to score (a scoring cost)
                self._network = ev.proxy.prepare(self._raw, recalibrate=False)
                self.timings.setdefault("recalibrate", 0.0)
                phase = "score"
            else:  # continue the average over the batches not seen yet
                self._network = ev.proxy.prepare(self._raw, batches=(self._batches, batches))
                self._batches = batches
                phase = "recalibrate"
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t
        return self._network

    def _fail(self, error: BaseException) -> None:
        text = str(error).strip()
        self.reason = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        self._network = self._raw = None


class Evaluator:
    """Scores policies of one network on one proxy, with one pruner and one cost model.

    Args:
        model: the dense network (never modified).
        example_inputs: an input batch for tracing and counting FLOPs (batch size 1 is usual).
        space: the search space.
        proxy: the accuracy proxy.
        criterion: channel-selection criterion of the pruner: a registered name or a Torch-Pruning importance
            object; one that needs gradients (``taylor``) takes them on the proxy's calibration images.
        latency: latency settings; when given, every fully scored candidate's latency is measured.
        pruner: the pruner to build networks with (default: a new one on ``model``, ``space`` and ``criterion``).
        recovery: applied to every pruned network before scoring (e.g. a
            :class:`~autoprune.core.reconstruct.Reconstructor`); a recovered network keeps the BatchNorm
            statistics the recovery leaves instead of being recalibrated.
        latency_table: a latency lookup table: ``cost_of("latency")`` then predicts from it instead of
            timing each pruned network (a candidate's ``latency_ms`` stays measured when ``latency`` is given).
        racing: the stages at which :meth:`evaluate` compares a candidate with an incumbent (None: racing off).
        held_out: the proxy split's images the proxy does not score (None or empty: it scores all of them): the
            final choice among a search's best candidates is made on them (:mod:`autoprune.run.confirm`), and
            evolution's fresh selection draws from them and the proxy's images.

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
        racing: Racing | None = None,
        held_out: ImageSet | None = None,
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
        self.racing = racing
        self.held_out = held_out
        self._cache: dict[tuple[int, ...], Candidate] = {}
        self._hits: dict[tuple[int, ...], torch.Tensor] = {}
        self._latency_cache: dict[tuple[int, ...], float] = {}
        self.count = 0
        self.seconds = {"total": 0.0, "forward": 0.0}

    def with_recovery(self, recovery: Callable[[nn.Module, Mapping[str, int]], None]) -> Evaluator:
        """A copy that recovers every pruned network with ``recovery``: same network, pruner, cost model, proxy,
        latency settings, racing and observers, its own cache (its scores differ from this Evaluator's)."""
        copy = Evaluator(self.model, self.example_inputs, self.space, self.proxy, self.pruner.criterion, self.latency,
                         pruner=self.pruner, recovery=recovery, latency_table=self.latency_table, racing=self.racing,
                         held_out=self.held_out)
        copy.observers = self.observers
        return copy

    def key(self, kept: Mapping[str, int]) -> tuple[int, ...]:
        """The cache key of a channel layout."""
        return tuple(kept[n] for n in self.space.names)

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

    def start(self, policy: Policy, meta: Mapping[str, Any] | None = None) -> Scoring:
        """Begin scoring ``policy`` in stages; a layout scored before resumes from the images it already has."""
        start = time.perf_counter()
        kept = self.kept(policy)
        key = self.key(kept)
        return Scoring(self, policy, kept, dict(meta or {}), start, self._hits.get(key), self._cache.get(key))

    def evaluate(self, policy: Policy, meta: Mapping[str, Any] | None = None, *,
                 incumbent: Candidate | None = None) -> Candidate:
        """Evaluate ``policy`` and hand the candidate to every observer.

        With an ``incumbent`` (a candidate scored on every image) and racing on, the candidate is scored stage by
        stage and stopped as soon as it cannot beat the incumbent (status ``stopped``). A layout scored before is
        answered from the cache (a stopped one again only while racing). A failure (an over-pruned layer, a tracing
        error, out of memory, NaN outputs, anything the network raises) becomes a candidate with status ``fail``
        and its reason; it is not raised.
        """
        start = time.perf_counter()
        kept = self.kept(policy)
        key = self.key(kept)
        hit = self._cache.get(key)
        racing = self.racing if incumbent is not None and incumbent.ok else None
        if hit is not None and (hit.status != "stopped" or racing is not None):
            candidate = replace(hit, index=self.count, policy=policy, cached=True, meta=dict(meta or {}),
                                timings={"total": time.perf_counter() - start})
            self.count += 1
            self.seconds["total"] += candidate.timings["total"]
            for observer in self.observers:
                observer(candidate)
            return candidate
        return self._race(Scoring(self, policy, kept, dict(meta or {}), start, self._hits.get(key), hit),
                          incumbent).finish()

    def race(self, policy: Policy, meta: Mapping[str, Any] | None = None, *,
             incumbent: Candidate | None = None) -> Scoring:
        """Score ``policy`` as :meth:`evaluate` does (racing ``incumbent``) but leave it unfinished: nothing is
        recorded until its :meth:`Scoring.finish`, and nothing ever if it is dropped (a speculative candidate whose
        premise failed)."""
        return self._race(self.start(policy, meta), incumbent)

    def _race(self, scoring: Scoring, incumbent: Candidate | None) -> Scoring:
        racing = self.racing if incumbent is not None and incumbent.ok else None
        if racing is not None:
            against = self.hits(incumbent)  # type: ignore[arg-type]
            for images in racing.stages[:-1]:
                scoring.advance(images)
                if scoring.failed or scoring.loses_to(against, racing):
                    return scoring
        scoring.advance()
        return scoring

    def hits(self, candidate: Candidate) -> torch.Tensor:
        """Whether the candidate's network gets each proxy image right (scored again if this Evaluator has not
        scored its layout, e.g. a resumed run's record)."""
        key = self.key(candidate.kept)
        known = self._hits.get(key)
        if known is None or len(known) < len(self.proxy):
            scoring = Scoring(self, candidate.policy, candidate.kept, {}, time.perf_counter(), known, candidate)
            scoring.advance()
            if scoring.failed:
                raise RuntimeError(f"candidate {candidate.index} scored before cannot be scored again: {scoring.reason}")
            self._hits[key] = known = scoring.hits
        return known

    def full_hits(self, kept: Mapping[str, int]) -> torch.Tensor | None:
        """The per-image hits of a layout this Evaluator scored on every proxy image (None: it has not)."""
        known = self._hits.get(self.key(kept))
        return known if known is not None and len(known) == len(self.proxy) else None

    def adopt_hits(self, kept: Mapping[str, int], hits: torch.Tensor) -> None:
        """Take the per-image hits on every proxy image of a layout another worker scored (an incumbent it found),
        so that racing compares candidates with it without scoring it again."""
        if len(hits) == len(self.proxy) and self.full_hits(kept) is None:
            self._hits[self.key(kept)] = hits

    def keep(self, candidate: Candidate, hits: torch.Tensor | None) -> None:
        """Cache a finished candidate and its per-image hits, keeping whichever record has scored more images."""
        key = self.key(candidate.kept)
        old = self._cache.get(key)
        if old is None or (candidate.fidelity or 0) >= (old.fidelity or 0):
            self._cache[key] = candidate
        if hits is not None and len(hits) > len(self._hits.get(key, ())):
            self._hits[key] = hits

    def remember(self, candidate: Candidate) -> None:
        """Take a candidate evaluated before (a resumed run's record) as if this Evaluator had scored it: later
        evaluations of its kept channels are cache hits, and new candidates are numbered after it. Observers are
        not called (it is already recorded)."""
        self._cache.setdefault(self.key(candidate.kept), candidate)
        self.count = max(self.count, candidate.index + 1)

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
