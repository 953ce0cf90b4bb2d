"""The search space: prunable units found from the dependency graph, with ratio bounds and rounding.

A channel unit is one Torch-Pruning group (coupled layers share one ratio), named by its first
output-pruned convolution or linear layer in module order. In a transformer the MLP hidden width of
each block is such a unit (its first Linear, e.g. ``encoder.layers.encoder_layer_0.mlp.0`` in
torchvision's ``VisionTransformer``).

An attention layer (``nn.MultiheadAttention`` with a packed input projection) is a heads unit
(``Unit.kind == "heads"``), named by the attention module: its "channels" are its heads, so
``Unit.kept``, ``round_to`` and ``SearchSpace.kept`` count whole heads, and the pruner removes the
query, key and value rows of the least important heads and their ``out_proj`` columns (the
layer becomes :class:`~autoprune.core.graph.HeadPrunedMultiheadAttention`, ``num_heads`` the kept
heads, ``head_dim`` and ``embed_dim`` unchanged). The embedding dimension (residual stream) couples
every block and is never a unit: a Torch-Pruning group with an attention layer among its members is
skipped. ``search_spaces/vit.yaml`` chooses the MLP and heads units of each block.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.core.graph import build_dependency_graph, is_depthwise, member_role, prunable_heads
from autoprune.core.policy import Policy
from autoprune.errors import ConfigError, UnsupportedModelError


@dataclass(frozen=True)
class BoundsRule:
    """Ratio bounds and rounding for the units whose names match ``pattern``."""

    pattern: str
    min_ratio: float | None = None
    max_ratio: float | None = None
    round_to: int | None = None


@dataclass(frozen=True)
class SpaceConfig:
    """Which units are searched and how (a ``search_spaces/*.yaml`` preset).

    Attributes:
        name: preset name.
        include: fnmatch patterns over unit names; a unit must match one.
        exclude: fnmatch patterns of units left dense.
        coupled: include groups that couple several convolutions (residual streams); when False only
            groups with a single output-pruned convolution or linear layer are searched.
        min_ratio: default lower bound of each unit's pruning ratio.
        max_ratio: default upper bound.
        round_to: default channel rounding (kept channels are a multiple of it).
        rules: per-pattern overrides, applied in order.
        ignored_layers: module names never pruned (the classifier is always left alone).
    """

    name: str = "custom"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    coupled: bool = True
    min_ratio: float = 0.0
    max_ratio: float = 0.8
    round_to: int = 1
    rules: tuple[BoundsRule, ...] = ()
    ignored_layers: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], name: str = "custom") -> SpaceConfig:
        """Build from a parsed YAML mapping; unknown keys and bad values raise :class:`ConfigError`."""
        known = {"name", "description", "include", "exclude", "coupled", "min_ratio", "max_ratio", "round_to",
                 "rules", "ignored_layers"}
        unknown = set(doc) - known
        if unknown:
            raise ConfigError(f"search space {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        rules = tuple(BoundsRule(**r) for r in doc.get("rules", ()) or ())
        config = cls(
            name=str(doc.get("name", name)),
            include=tuple(doc.get("include", ("*",))),
            exclude=tuple(doc.get("exclude", ()) or ()),
            coupled=bool(doc.get("coupled", True)),
            min_ratio=float(doc.get("min_ratio", 0.0)),
            max_ratio=float(doc.get("max_ratio", 0.8)),
            round_to=int(doc.get("round_to", 1)),
            rules=rules,
            ignored_layers=tuple(doc.get("ignored_layers", ()) or ()),
        )
        config.check_bounds(config.min_ratio, config.max_ratio, config.round_to, "")
        for rule in rules:
            config.check_bounds(rule.min_ratio, rule.max_ratio, rule.round_to, f" rule {rule.pattern!r}")
        return config

    def check_bounds(self, lo: float | None, hi: float | None, round_to: int | None, where: str) -> None:
        """Raise :class:`ConfigError` unless ``0 <= lo <= hi < 1`` and ``round_to >= 1``."""
        lo_v = self.min_ratio if lo is None else lo
        hi_v = self.max_ratio if hi is None else hi
        if not 0.0 <= lo_v <= hi_v < 1.0:
            raise ConfigError(
                f"search space {self.name!r}{where}: `0 <= min_ratio <= max_ratio < 1` must hold, got ({lo_v}, {hi_v})"
            )
        if round_to is not None and round_to < 1:
            raise ConfigError(f"search space {self.name!r}{where}: round_to must be >= 1, got {round_to}")


@dataclass(frozen=True)
class LayerInfo:
    """The unit's first layer, as AMC's layer embedding describes it."""

    kind: str  # conv, depthwise or linear
    in_channels: int
    out_channels: int
    kernel: int
    stride: int


@dataclass(frozen=True)
class Unit:
    """One searched group of coupled channels.

    Attributes:
        name: fully-qualified name of the group's first output-pruned layer.
        channels: dense channel count.
        min_ratio: lowest pruning ratio the search may propose.
        max_ratio: highest pruning ratio.
        round_to: kept channels are a multiple of this (or all channels).
        members: ``(module name, role)`` for every layer the group prunes; role is ``out``, ``in`` or
            ``both`` (in-out coupled layers: batch norm, depthwise convolution). A heads unit has the
            attention module (``out``: its projections shrink with the heads) and its ``out_proj`` (``in``).
        layer: description of the first layer (a heads unit: ``linear``, ``embed_dim`` in, heads out).
        kind: ``channels``, or ``heads`` for the attention heads of an ``nn.MultiheadAttention``
            (``channels`` is then its head count and every count of the unit is in heads).
    """

    name: str
    channels: int
    min_ratio: float
    max_ratio: float
    round_to: int
    members: tuple[tuple[str, str], ...]
    layer: LayerInfo
    kind: str = "channels"

    def kept(self, ratio: float) -> int:
        """Channels kept at ``ratio``: the nearest count the unit allows (a multiple of ``round_to`` within
        its bounds, or all channels when ``min_ratio`` is 0)."""
        step = min(self.round_to, self.channels)
        target = self.channels * (1.0 - ratio)
        top = max(self._fewest, (self._most // step) * step)
        kept = int(min(top, max(self._fewest, round(target / step) * step)))
        if self._most == self.channels and self.channels - target < abs(kept - target):
            return self.channels
        return kept

    @property
    def _fewest(self) -> int:
        step = min(self.round_to, self.channels)
        fewest = math.ceil(self.channels * (1.0 - self.max_ratio) / step - 1e-9) * step
        return int(min(self.channels, max(step, fewest)))

    @property
    def _most(self) -> int:
        if self.min_ratio == 0.0:
            return self.channels
        step = min(self.round_to, self.channels)
        return int(max(self._fewest, math.floor(self.channels * (1.0 - self.min_ratio) / step + 1e-9) * step))

    @property
    def min_kept(self) -> int:
        """Fewest channels the search may keep."""
        return self._fewest

    @property
    def max_kept(self) -> int:
        """Most channels the search may keep."""
        return self._most

    @property
    def allowed_kept(self) -> tuple[int, ...]:
        """Every kept count some ratio within the bounds gives, ascending."""
        return tuple(count for count, _ in self.kept_options)

    @property
    def kept_options(self) -> tuple[tuple[int, float], ...]:
        """Every kept count some ratio within the bounds gives, ascending, each with a ratio that gives it."""
        step = min(self.round_to, self.channels)
        options: dict[int, float] = {}
        for count in [*range(self.min_kept, self.max_kept + 1, step), self.max_kept]:
            ratio = min(self.max_ratio, max(self.min_ratio, 1.0 - count / self.channels))
            options.setdefault(self.kept(ratio), ratio)
        return tuple(sorted(options.items()))


@dataclass(frozen=True)
class SearchSpace:
    """The ordered prunable units of one network."""

    units: tuple[Unit, ...]
    config: SpaceConfig = field(default_factory=SpaceConfig)

    @property
    def names(self) -> tuple[str, ...]:
        """Unit names in network order."""
        return tuple(u.name for u in self.units)

    def __len__(self) -> int:
        return len(self.units)

    def unit(self, name: str) -> Unit:
        """The unit called ``name``."""
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    def kept(self, policy: Mapping[str, float]) -> dict[str, int]:
        """Kept channels per unit; units the policy leaves out stay dense."""
        return {u.name: u.kept(policy.get(u.name, 0.0)) for u in self.units}

    def sample_ratios(self, rng: np.random.Generator) -> dict[str, float]:
        """Each unit's ratio drawn uniformly in its bounds (random search's draw, before projection)."""
        return {u.name: float(rng.uniform(u.min_ratio, u.max_ratio)) for u in self.units}

    def policy_from_kept(self, kept: Mapping[str, int]) -> Policy:
        """The policy whose rounding gives exactly ``kept`` channels."""
        return Policy({u.name: 1.0 - kept[u.name] / u.channels for u in self.units})

    def check_policy(self, policy: Mapping[str, float], tolerance: float = 1e-9) -> None:
        """Raise :class:`ConfigError` if the policy names unknown units or leaves a unit's bounds."""
        unknown = [n for n in policy if n not in self.names]
        if unknown:
            raise ConfigError(f"policy names units not in the search space: {unknown[:3]}; valid: {list(self.names)[:5]}...")
        for u in self.units:
            r = policy.get(u.name, 0.0)
            if not u.min_ratio - tolerance <= r <= u.max_ratio + tolerance:
                raise ConfigError(f"ratio {r:.4f} of unit {u.name!r} is outside its bounds [{u.min_ratio}, {u.max_ratio}]")

    @classmethod
    def from_model(
        cls, model: nn.Module, example_inputs: torch.Tensor, config: SpaceConfig | None = None,
        graph: tp.DependencyGraph | None = None,
    ) -> SearchSpace:
        """Find the prunable units of ``model`` with Torch-Pruning's dependency graph.

        Raises:
            UnsupportedModelError: if no unit is left to search.
        """
        config = config or SpaceConfig()
        graph = graph or build_dependency_graph(model, example_inputs)
        names = {m: n for n, m in model.named_modules()}
        order = {n: i for i, n in enumerate(names.values())}
        by_name = dict(model.named_modules())
        unknown = [n for n in config.ignored_layers if n not in by_name]
        if unknown:
            raise ConfigError(f"search space {config.name!r} ignores layers not in the model: {unknown}")
        ignored = [by_name[n] for n in config.ignored_layers] + [_classifier(model)]
        units = []
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
            members, producers = [], []
            for dep, _ in group:
                module = dep.target.module
                if not isinstance(module, nn.Module) or module not in names:
                    continue
                role = member_role(graph, dep.handler)
                members.append((names[module], role))
                if role == "out" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and not is_depthwise(module):
                    producers.append(names[module])
            if not producers or (len(producers) > 1 and not config.coupled):
                continue
            if any(isinstance(by_name[m], nn.MultiheadAttention) for m, _ in members):
                continue  # a transformer's embedding dimension (residual stream): never a unit
            name = min(producers, key=order.__getitem__)
            if not _selected(name, config):
                continue
            root = by_name[name]
            units.append(_make_unit(name, root, graph.get_out_channels(root), tuple(sorted(set(members), key=lambda m: order[m[0]])), config))
        for name, module in model.named_modules():  # attention heads: one unit per attention layer
            if prunable_heads(module) and module.num_heads > 1 and module not in ignored and _selected(name, config):
                members = ((name, "out"), (f"{name}.out_proj", "in"))
                units.append(_make_unit(name, module, module.num_heads, members, config, kind="heads"))
        if not units:
            raise UnsupportedModelError(
                f"no prunable unit in {type(model).__name__} with search space {config.name!r} "
                f"(include={list(config.include)}, exclude={list(config.exclude)}, coupled={config.coupled})"
            )
        units.sort(key=lambda u: order[u.name])
        return cls(tuple(units), config)


def _classifier(model: nn.Module) -> nn.Module:
    """The network's last linear (or convolution) layer, whose outputs are the class scores."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    if not layers:
        raise UnsupportedModelError(f"{type(model).__name__} has no convolution or linear layer to prune")
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    return linears[-1] if linears else layers[-1]


def _selected(name: str, config: SpaceConfig) -> bool:
    """Whether the unit ``name`` matches an include pattern and no exclude pattern."""
    return (any(fnmatch.fnmatchcase(name, p) for p in config.include)
            and not any(fnmatch.fnmatchcase(name, p) for p in config.exclude))


def _make_unit(name: str, root: nn.Module, channels: int, members: tuple[tuple[str, str], ...], config: SpaceConfig,
               kind: str = "channels") -> Unit:
    if kind == "heads":
        layer = LayerInfo("linear", root.embed_dim, root.num_heads, 1, 1)
    elif isinstance(root, nn.Linear):
        layer = LayerInfo("linear", root.in_features, root.out_features, 1, 1)
    else:
        layer = LayerInfo("depthwise" if is_depthwise(root) else "conv", root.in_channels, root.out_channels,
                          int(root.kernel_size[0]), int(root.stride[0]))
    unit = Unit(name, int(channels), config.min_ratio, config.max_ratio, config.round_to, members, layer, kind)
    for rule in config.rules:
        if fnmatch.fnmatchcase(name, rule.pattern):
            unit = replace(
                unit,
                min_ratio=unit.min_ratio if rule.min_ratio is None else rule.min_ratio,
                max_ratio=unit.max_ratio if rule.max_ratio is None else rule.max_ratio,
                round_to=unit.round_to if rule.round_to is None else rule.round_to,
            )
    return unit
