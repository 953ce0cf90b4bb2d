"""Latency lookup table: predict a pruned network's latency without building or timing it.

The prediction is the dense network's measured latency minus what each unit saves. A unit's saving
at ``k`` kept channels is the time its member layers (its convolution and BatchNorm with ``k`` output
channels, its consumer layer with ``k`` input channels) lose against the dense network. Layers are
timed where they run, inside whole pruned networks, with forward hooks: timed alone (hot caches, no
neighbours) a CIFAR ResNet's layers save about a quarter less than they do in the network. One
network times many units at once: units that share no layer are pruned together, each to its
``i``-th count at level ``i``, so a unit with ``n`` allowed counts needs ``n`` networks, not one per
unit and count. Savings are timed for every kept count a unit allows, or for ``points`` counts spread
over them and linearly interpolated.

Savings of two units add up except in a layer whose input channels belong to one unit and output
channels to another (a block's second convolution in a coupled residual space): its time depends on
both counts jointly (about their product), so the two one-unit savings overstate the joint one. For
every such layer the table keeps the interaction
``t(a, b) - t(a, dense) - t(dense, b) + t(dense, dense)``, timed on a small grid of both counts and
interpolated bilinearly, and adds it back. Operations outside the units' layers (functional ReLU,
residual additions, pooling) are not timed; one calibration factor, fitted by least squares on whole
networks pruned uniformly at a few levels (as :class:`~autoprune.core.cost.CostModel` calibrates what
fvcore counts outside leaf modules), scales every saving to account for them.

Timings are relative: the table stores savings with the dense latency measured in the same session,
and :meth:`LatencyTable.rebased` scales a table to a dense latency measured now, so that a cached
table stays valid when the machine is uniformly faster or slower than when it was built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.console import status
from autoprune.core.budget import Budget
from autoprune.core.cost import (
    LatencySettings,
    measure_latency,
    resolve_device,
    time_forward_passes,
)
from autoprune.core.prune import Pruner
from autoprune.core.space import SearchSpace, Unit
from autoprune.core.threads import torch_threads
from autoprune.errors import ConfigError
from autoprune.io import atomic_write_text
from autoprune.zoo.images import cache_dir

TABLE_FORMAT = "autoprune-latency-table-v1"
LATENCY_MODELS = ("lut", "measure")
CALIBRATION_LEVELS = (1 / 3, 2 / 3, 1.0)  # uniform calibration networks: this far from min_ratio to max_ratio

PruneFn = Callable[[Mapping[str, int]], nn.Module]


def resolve_latency_model(model: str | None, preferred: str, budget: Budget) -> str | None:
    """How a search prices latency: ``lut`` or ``measure`` (None without a latency budget).

    The default is the searcher's ``preferred`` model (its ``latency_model`` trait: the lookup table
    for methods that query the cost thousands of times, measurement otherwise).

    Raises:
        ConfigError: for an unknown model, or a model given without a latency budget.
    """
    if model is not None and model not in LATENCY_MODELS:
        raise ConfigError(f"unknown latency model {model!r}; choose one of {', '.join(LATENCY_MODELS)}")
    if budget.metric != "latency":
        if model is not None:
            raise ConfigError(f"--latency-model {model} applies to latency budgets, not {budget}")
        return None
    return model or preferred


def kept_grid(unit: Unit, points: int) -> tuple[int, ...]:
    """The kept counts a table times for ``unit``, ascending: every allowed count, or ``points`` spread
    over them; the dense count always ends the grid."""
    allowed = unit.allowed_kept
    if len(allowed) > points:
        picks = np.unique(np.round(np.linspace(0, len(allowed) - 1, points)).astype(int))
        allowed = tuple(allowed[i] for i in picks)
    return tuple(sorted({*allowed, unit.channels}))


@dataclass(frozen=True)
class Interaction:
    """The non-additive part of the time of a layer whose input and output channels belong to two units.

    Attributes:
        module: the layer.
        in_unit: the unit of its input channels.
        out_unit: the unit of its output channels.
        in_kept: grid of ``in_unit`` kept counts, ascending, ending at dense.
        out_kept: grid of ``out_unit`` kept counts, ascending, ending at dense.
        ms: ``ms[i][j] = t(in_kept[i], out_kept[j]) - t(in_kept[i], dense) - t(dense, out_kept[j]) + t(dense, dense)``.
    """

    module: str
    in_unit: str
    out_unit: str
    in_kept: tuple[int, ...]
    out_kept: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]

    def at(self, a: int, b: int) -> float:
        """Bilinear interpolation of the interaction at ``a`` input and ``b`` output channels."""
        rows = np.array([np.interp(b, self.out_kept, row) for row in self.ms])
        return float(np.interp(a, self.in_kept, rows))


@dataclass(frozen=True)
class LatencyTable:
    """Per-unit latency savings of one network on one device, and the dense latency they are relative to.

    Attributes:
        reference_ms: dense latency measured in the session that timed the savings.
        savings: ``unit -> kept -> ms`` saved when only that unit keeps ``kept`` channels (dense: 0).
        interactions: corrections for layers shared by two units (see the module docstring).
        scale: calibration factor of every saving.
        calibration: ``(predicted, measured)`` ms of the whole networks the scale was fitted on.
        device: where it was timed.
        threads: CPU threads during timing.
        batch_size: batch size of the timed inputs.
        dense_ms: the dense latency predictions are relative to (``reference_ms`` unless rebased).
    """

    reference_ms: float
    savings: dict[str, dict[int, float]]
    interactions: tuple[Interaction, ...] = ()
    scale: float = 1.0
    calibration: tuple[tuple[float, float], ...] = ()
    device: str = "cpu"
    threads: int | None = 1
    batch_size: int = 1
    dense_ms: float = 0.0
    _curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.dense_ms:
            object.__setattr__(self, "dense_ms", self.reference_ms)
        for unit, table in self.savings.items():
            ks = sorted(table)
            self._curves[unit] = (np.array(ks, dtype=np.float64), np.array([table[k] for k in ks]))

    def saving(self, unit: str, kept: int) -> float:
        """Uncalibrated milliseconds (at ``reference_ms``) saved when only ``unit`` keeps ``kept`` channels."""
        exact = self.savings[unit].get(kept)
        if exact is not None:
            return exact
        ks, ms = self._curves[unit]
        return float(np.interp(kept, ks, ms))

    def raw_saving(self, kept: Mapping[str, int]) -> float:
        """Uncalibrated milliseconds (at ``reference_ms``) saved by keeping ``kept``."""
        saved = sum(self.saving(u, kept[u]) for u in self.savings if u in kept)
        for i in self.interactions:
            a, b = kept.get(i.in_unit, i.in_kept[-1]), kept.get(i.out_unit, i.out_kept[-1])
            if a != i.in_kept[-1] and b != i.out_kept[-1]:
                saved -= i.at(a, b)
        return saved

    def predict(self, kept: Mapping[str, int]) -> float:
        """Predicted latency (ms) of the network keeping ``kept[unit]`` channels (missing units stay dense)."""
        return self.dense_ms * (1.0 - self.scale * self.raw_saving(kept) / self.reference_ms)

    def rebased(self, dense_ms: float) -> LatencyTable:
        """The same table, predicting relative to a dense latency measured now."""
        return replace(self, dense_ms=dense_ms)

    @property
    def entries(self) -> int:
        """Number of (unit, kept count) entries, dense counts included."""
        return sum(len(t) for t in self.savings.values())

    def to_json(self) -> str:
        """The table as JSON (kept counts as string keys)."""
        doc = asdict(self)
        doc.pop("_curves", None)
        doc["savings"] = {u: {str(k): v for k, v in t.items()} for u, t in self.savings.items()}
        return json.dumps({"format": TABLE_FORMAT, **doc}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        """Read a table written by :meth:`to_json`.

        Raises:
            ValueError: if the text is not such a table.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.pop("format", None) != TABLE_FORMAT:
            raise ValueError("not an autoprune latency table")
        doc["savings"] = {u: {int(k): float(v) for k, v in t.items()} for u, t in doc["savings"].items()}
        doc["calibration"] = tuple(tuple(pair) for pair in doc["calibration"])
        doc["interactions"] = tuple(
            Interaction(i["module"], i["in_unit"], i["out_unit"], tuple(i["in_kept"]), tuple(i["out_kept"]),
                        tuple(tuple(r) for r in i["ms"]))
            for i in doc["interactions"]
        )
        return cls(**doc)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_inputs: torch.Tensor,
        space: SearchSpace,
        settings: LatencySettings | None = None,
        prune: PruneFn | None = None,
        points: int = 64,
        pair_points: int = 5,
    ) -> LatencyTable:
        """Time every unit's layers at its kept counts inside pruned networks, then calibrate.

        Args:
            model: the dense network (not modified).
            example_inputs: an input of the network (its batch size is replaced by the settings').
            space: the search space whose units vary.
            settings: device, threads, repeats, warm-up passes and batch size of every timing.
            prune: builds the pruned network of kept channels (default: a Torch-Pruning
                :class:`~autoprune.core.prune.Pruner`; which channels go does not change timings).
            points: at most this many kept counts timed per unit (every allowed count if fewer).
            pair_points: grid size per side of the interaction of a layer shared by two units.

        Raises:
            ConfigError: if latency cannot be timed on the settings' device.
        """
        settings = settings or LatencySettings()
        device = resolve_device(settings.device)
        x = torch.randn((settings.batch_size, *example_inputs.shape[1:]), generator=torch.Generator().manual_seed(0))
        prune = prune or Pruner(model, example_inputs, space).prune
        dense = copy.deepcopy(model)
        dense_ms = measure_latency(dense, x, device, settings.repeats, settings.warmup, settings.threads)
        timer = _LayerTimer(model, space, x, settings, device, prune, dense_ms)
        savings, interactions = timer.savings(points, pair_points)
        table = cls(dense_ms, savings, interactions, device=str(device), threads=settings.threads,
                    batch_size=settings.batch_size)
        pairs = []
        for level in CALIBRATION_LEVELS:
            kept = {u.name: u.kept(level * u.max_ratio + (1 - level) * u.min_ratio) for u in space.units}
            pruned, reference = paired_latency(prune(kept), dense, x, settings)
            pairs.append((table.raw_saving(kept), dense_ms * (1.0 - pruned / reference)))
        raw = np.array(pairs)
        scale = max(0.0, float(raw[:, 0] @ raw[:, 1] / (raw[:, 0] @ raw[:, 0]))) if raw[:, 0].any() else 1.0
        return replace(table, scale=scale, calibration=tuple((dense_ms - scale * p, dense_ms - m) for p, m in pairs))


class _LayerTimer:
    """Times the units' layers inside whole pruned networks with forward hooks."""

    def __init__(self, model: nn.Module, space: SearchSpace, x: torch.Tensor, settings: LatencySettings,
                 device: torch.device, prune: PruneFn, reference_ms: float) -> None:
        self.space, self.x, self.settings, self.device, self.prune = space, x, settings, device, prune
        self.dense = copy.deepcopy(model).to(device).eval()
        self.reference_ms = reference_ms
        self.roles: dict[str, dict[str, str]] = defaultdict(dict)
        for u in space.units:
            for name, role in u.members:
                self.roles[name][role] = u.name
        self.layers = {u.name: tuple(dict.fromkeys(n for n, _ in u.members)) for u in space.units}
        self.shared = [(m, r["in"], r["out"]) for m, r in self.roles.items() if "in" in r and "out" in r and r["in"] != r["out"]]

    def saved(self, kept: Mapping[str, int]) -> dict[str, float]:
        """Milliseconds (at ``reference_ms``) every unit layer saves in the network keeping ``kept``.

        The dense and the pruned network run alternately, so both see the same load on the machine;
        a layer's saving is the difference of its median times, as a fraction of the dense network's
        median time in the same window, times ``reference_ms``.
        """
        networks = (self.dense, self.prune(kept).to(self.device).eval())
        samples: list[dict[str, list[float]]] = [defaultdict(list), defaultdict(list)]
        totals: list[float] = []
        started: dict[str, float] = {}
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        current = [0]

        def before(name: str):
            def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                sync()
                started[name] = time.perf_counter()
            return hook

        def after(name: str):
            def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                sync()
                samples[current[0]][name].append(time.perf_counter() - started[name])
            return hook

        x, s = self.x.to(self.device), self.settings
        handles = []
        try:
            with torch_threads(s.threads), torch.inference_mode():
                for _ in range(s.warmup):
                    for network in networks:
                        network(x)
                for network in networks:
                    modules = dict(network.named_modules())
                    handles += [h for name in self.roles for h in (modules[name].register_forward_pre_hook(before(name)),
                                                                   modules[name].register_forward_hook(after(name)))]
                for _ in range(s.repeats):
                    for i, network in enumerate(networks):
                        current[0] = i
                        sync()
                        start = time.perf_counter()
                        network(x)
                        sync()
                        if i == 0:
                            totals.append(time.perf_counter() - start)
        finally:
            for h in handles:
                h.remove()
        factor = self.reference_ms / statistics.median(totals)
        return {name: factor * (statistics.median(samples[0][name]) - statistics.median(samples[1][name]))
                for name in self.roles}

    def groups(self) -> list[list[Unit]]:
        """Units in groups that share no layer (greedy colouring); a group is timed in the same networks."""
        shared = defaultdict(set)
        for _, a, b in self.shared:
            shared[a].add(b)
            shared[b].add(a)
        groups: list[list[Unit]] = []
        for u in self.space.units:
            group = next((g for g in groups if not any(v.name in shared[u.name] for v in g)), None)
            if group is None:
                groups.append([u])
            else:
                group.append(u)
        return groups

    def savings(self, points: int, pair_points: int) -> tuple[dict[str, dict[int, float]], tuple[Interaction, ...]]:
        """Every unit's savings at its grid counts, and the interactions of layers shared by two units."""
        found: dict[str, dict[int, list[float]]] = {u.name: defaultdict(list) for u in self.space.units}
        alone: dict[tuple[str, str, int], float] = {}  # (layer, unit, kept): layer saving with that unit pruned alone
        levels: list[list[dict[str, int]]] = []  # per group, the kept counts of each level (dense level left out)
        groups = self.groups()
        for group in groups:
            grids = {u.name: kept_grid(u, points) for u in group}
            n = max(len(g) for g in grids.values())
            levels.append([{u: g[round(i * (len(g) - 1) / (n - 1))] for u, g in grids.items()} for i in range(n - 1)])
            for kept in levels[-1]:
                saved = self.saved(kept)
                for u, k in kept.items():
                    if k == self.space.unit(u).channels:
                        continue
                    found[u][k].append(sum(saved[m] for m in self.layers[u]))
                    for m in self.layers[u]:
                        alone.setdefault((m, u, k), saved[m])
        savings = {u.name: {u.channels: 0.0, **{k: float(np.mean(v)) for k, v in found[u.name].items()}}
                   for u in self.space.units}
        group_of = {u.name: g for g, group in enumerate(groups) for u in group}
        return savings, self._interactions(alone, levels, group_of, pair_points)

    def _interactions(self, alone: dict[tuple[str, str, int], float],
                      levels: list[list[dict[str, int]]], group_of: dict[str, int],
                      pair_points: int) -> tuple[Interaction, ...]:
        """Time every layer shared by two units with both pruned, on a grid of levels of their two groups."""
        joint: dict[tuple[str, int, int], float] = {}
        for g1, g2 in sorted({tuple(sorted((group_of[a], group_of[b]))) for _, a, b in self.shared}):
            if not levels[g1] or not levels[g2]:
                continue
            picks1, picks2 = (_spread(len(levels[g]), pair_points - 1) for g in (g1, g2))
            for i in picks1:
                for j in picks2:
                    kept = {**levels[g1][i], **levels[g2][j]}
                    saved = self.saved(kept)
                    for m, a, b in self.shared:
                        joint.setdefault((m, kept.get(a, -1), kept.get(b, -1)), saved[m])
        out = []
        for m, a, b in self.shared:
            ua, ub = self.space.unit(a), self.space.unit(b)
            grid_a = sorted({ka for (layer, ka, kb) in joint if layer == m and ka not in (-1, ua.channels)})
            grid_b = sorted({kb for (layer, ka, kb) in joint if layer == m and kb not in (-1, ub.channels)})
            rows = [tuple(alone[(m, a, ka)] + alone[(m, b, kb)] - joint[(m, ka, kb)] for kb in grid_b) + (0.0,)
                    for ka in grid_a]
            rows.append((0.0,) * (len(grid_b) + 1))
            out.append(Interaction(m, a, b, (*grid_a, ua.channels), (*grid_b, ub.channels), tuple(rows)))
        return tuple(out)


def paired_latency(network: nn.Module, reference: nn.Module, x: torch.Tensor, settings: LatencySettings) -> tuple[float, float]:
    """Median latencies (ms) of ``network`` and ``reference``, the two run alternately (same load on the machine)."""
    ours, theirs = time_forward_passes([network, reference], x, resolve_device(settings.device), settings.repeats,
                                       settings.warmup, settings.threads)
    return 1e3 * statistics.median(ours), 1e3 * statistics.median(theirs)


def _spread(n: int, k: int) -> list[int]:
    """About ``k`` indices spread evenly over ``range(n)``."""
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(max(1, k))})


def table_key(model: nn.Module, example_inputs: torch.Tensor, space: SearchSpace, settings: LatencySettings,
              points: int, pair_points: int) -> str:
    """Cache key of a table: architecture, input, searched units and their counts, device and timing settings."""
    device = resolve_device(settings.device)
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.machine()} {platform.processor()} {os.cpu_count()}")
    doc = {
        "format": TABLE_FORMAT, "architecture": str(model), "input": list(example_inputs.shape[1:]),
        "units": [[u.name, u.channels, list(kept_grid(u, points))] for u in space.units],
        "hardware": hardware, "torch": torch.__version__, "device": str(device), "threads": settings.threads,
        "batch_size": settings.batch_size, "repeats": settings.repeats, "warmup": settings.warmup, "pairs": pair_points,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def latency_table_for(
    model: nn.Module,
    example_inputs: torch.Tensor,
    space: SearchSpace,
    settings: LatencySettings | None = None,
    prune: PruneFn | None = None,
    points: int = 64,
    pair_points: int = 5,
) -> LatencyTable:
    """The network's latency table from ``cache_dir()/latency/<key>.json``, rebased to a dense latency
    measured now, or built and cached.

    Args:
        model: the dense network.
        example_inputs: an input of the network.
        space: the search space.
        settings: timing settings (device, threads, repeats, warm-up, batch size).
        prune: builds pruned networks (see :meth:`LatencyTable.build`).
        points: kept counts timed per unit at most.
        pair_points: interaction grid size per side.

    Raises:
        ConfigError: if latency cannot be timed on the settings' device.
    """
    settings = settings or LatencySettings()
    path = cache_dir() / "latency" / f"{table_key(model, example_inputs, space, settings, points, pair_points)}.json"
    try:
        table = LatencyTable.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):  # missing or unreadable: time it (again)
        status(f"timing the latency lookup table once for this machine (cached in {path.parent})")
        table = LatencyTable.build(model, example_inputs, space, settings, prune, points, pair_points)
        _write(path, table.to_json())
        return table
    x = torch.randn((settings.batch_size, *example_inputs.shape[1:]), generator=torch.Generator().manual_seed(0))
    dense = measure_latency(copy.deepcopy(model), x, table.device, settings.repeats, settings.warmup, settings.threads)
    return table.rebased(dense)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
