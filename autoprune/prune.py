"""Policy -> a physically smaller network, through Torch-Pruning's dependency graph.

Channel importance is computed once on the dense network; every policy then removes each unit's
least important channels. The base model is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import ConfigError, UnsupportedModelError
from autoprune.graph import build_dependency_graph
from autoprune.space import SearchSpace

CRITERIA = ("l1", "l2", "bn_scale")


def importance_of(criterion: str) -> tp.importance.Importance:
    """Torch-Pruning's importance for a criterion name (group magnitude, no normalisation)."""
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    if criterion == "bn_scale":
        return tp.importance.BNScaleImportance(normalizer=None)
    raise ConfigError(f"unknown channel criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


class Pruner:
    """Builds pruned copies of one dense network.

    Args:
        model: the dense network; it is never modified.
        example_inputs: an input batch used to trace the network.
        space: the search space of ``model``.
        criterion: channel-selection criterion: ``l1`` (default), ``l2`` or ``bn_scale``.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, space: SearchSpace, criterion: str = "l1") -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.space = space
        self.criterion = criterion
        importance = importance_of(criterion)
        graph = build_dependency_graph(model, example_inputs)
        modules = dict(model.named_modules())
        self._order: dict[str, list[int]] = {}
        for unit in space.units:
            root = modules[unit.name]
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(range(unit.channels)))
            with torch.no_grad():
                scores = importance(group)
            if scores is None:  # the criterion found no layer to score (bn_scale on a group without BN)
                raise UnsupportedModelError(
                    f"criterion {criterion!r} cannot score unit {unit.name!r} (no layer it measures); use l1 or l2"
                )
            self._order[unit.name] = torch.argsort(scores.float(), stable=True).tolist()

    def removed_channels(self, unit_name: str, kept: int) -> list[int]:
        """Indices of the channels a unit loses when it keeps ``kept`` of them (least important first)."""
        unit = self.space.unit(unit_name)
        return sorted(self._order[unit_name][: unit.channels - kept])

    def prune(self, kept: Mapping[str, int]) -> nn.Module:
        """A pruned copy of the network keeping ``kept[unit]`` channels in each unit (others stay dense)."""
        model = copy.deepcopy(self.model)
        todo = {u.name: kept[u.name] for u in self.space.units if kept.get(u.name, u.channels) < u.channels}
        if not todo:
            return model
        graph = build_dependency_graph(model, self.example_inputs)
        modules = dict(model.named_modules())
        for name, k in todo.items():
            root = modules[name]
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, self.removed_channels(name, k))
            group.prune()
        return model

    def check_prunable(self) -> None:
        """Prune every unit to its fewest channels and run the network once.

        Raises:
            UnsupportedModelError: naming the first unit whose pruning breaks the forward pass.
        """
        expected = _output_shape(self.model, self.example_inputs)
        if _output_shape(self._try({u.name: u.min_kept for u in self.space.units}), self.example_inputs) == expected:
            return
        for unit in self.space.units:
            pruned = self._try({unit.name: unit.min_kept})
            if _output_shape(pruned, self.example_inputs) != expected:
                raise UnsupportedModelError(
                    f"pruning unit {unit.name!r} breaks the network (a layer autoprune cannot prune depends on it); "
                    f"exclude it in the search space"
                )

    def _try(self, kept: Mapping[str, int]) -> nn.Module | None:
        try:
            return self.prune(kept)
        except (RuntimeError, ValueError, IndexError):
            return None


def _output_shape(model: nn.Module | None, example_inputs: torch.Tensor) -> tuple[int, ...] | None:
    if model is None:
        return None
    try:
        with torch.no_grad():
            return tuple(model.eval()(example_inputs).shape)
    except (RuntimeError, ValueError, IndexError):
        return None
