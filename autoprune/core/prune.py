"""Policy -> a physically smaller network, through Torch-Pruning's dependency graph.

Channel importance is computed once on the dense network; every policy then removes each unit's
least important channels. The base model is never changed. A heads unit (an attention layer) ranks
whole heads, each scored as the mean of the criterion's scores of its query/key/value/output channels
(Torch-Pruning's head-pruning rule), and loses its least important heads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from autoprune.core.graph import build_dependency_graph, prune_heads
from autoprune.core.importance import CRITERIA, criterion_name, gradient_pass, importance_of, needs_gradients
from autoprune.core.space import SearchSpace
from autoprune.errors import ConfigError, UnsupportedModelError

__all__ = ["CRITERIA", "Pruner", "importance_of"]


class Pruner:
    """Builds pruned copies of one dense network.

    Args:
        model: the dense network; it is never modified (a criterion that needs gradients works on a copy).
        example_inputs: an input batch used to trace the network.
        space: the search space of ``model``.
        criterion: a registered name (``l1`` (default), ``l2``, ``bn_scale``, ``lamp``, ``taylor``; see
            :data:`~autoprune.core.importance.CRITERIA`) or any Torch-Pruning importance object. ``criterion``
            then holds its name; an object is named by its class, and such a policy cannot be re-applied by
            name from the command line.
        calibration: images (one tensor or a list of batches) for the one gradient pass of a criterion that
            needs gradients (``taylor``); ignored by the others.
        calibration_labels: labels of ``calibration`` (concatenated); without them the loss is on the
            network's own top-1 predictions.

    Raises:
        ConfigError: for an unknown criterion name, or one that needs gradients without calibration images.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        space: SearchSpace,
        criterion: str | tp.importance.Importance = "l1",
        calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
        calibration_labels: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.space = space
        self.criterion = criterion_name(criterion)
        self.importance = importance_of(criterion)
        if needs_gradients(criterion):  # one gradient pass, on a copy, once per Pruner
            scored = _with_gradients(model, self.criterion, calibration, calibration_labels)
            self._order = self._rank(scored)
            scored.zero_grad(set_to_none=True)
        else:
            self._order = self._rank(model)

    def _rank(self, model: nn.Module) -> dict[str, list[int]]:
        """Each unit's channels, least important first, scored on ``model`` (the dense network or its copy)."""
        graph = build_dependency_graph(model, self.example_inputs)
        modules = dict(model.named_modules())
        order: dict[str, list[int]] = {}
        for unit in self.space.units:
            root = modules[unit.name]
            if unit.kind == "heads":
                scores = _head_scores(root, self.importance)
            else:
                group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(range(unit.channels)))
                with torch.no_grad():
                    scores = self.importance(group)
            if scores is None:  # the criterion found no layer to score (bn_scale on a group without BN)
                raise UnsupportedModelError(
                    f"criterion {self.criterion!r} cannot score unit {unit.name!r} (no layer it measures); use l1 or l2"
                )
            order[unit.name] = torch.argsort(scores.float(), stable=True).tolist()
        return order

    def removed_channels(self, unit_name: str, kept: int) -> list[int]:
        """Indices of the channels a unit loses when it keeps ``kept`` of them (least important first)."""
        unit = self.space.unit(unit_name)
        return sorted(self._order[unit_name][: unit.channels - kept])

    def prune(self, kept: Mapping[str, int]) -> nn.Module:
        """A pruned copy of the network keeping ``kept[unit]`` channels in each unit (others stay dense)."""
        model = copy.deepcopy(self.model)
        todo = {u.name: kept[u.name] for u in self.space.units if kept.get(u.name, u.channels) < u.channels}
        heads = {n: k for n, k in todo.items() if self.space.unit(n).kind == "heads"}
        channels = {n: k for n, k in todo.items() if n not in heads}
        if channels:
            graph = build_dependency_graph(model, self.example_inputs)
            modules = dict(model.named_modules())
            for name, k in channels.items():
                root = modules[name]
                group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, self.removed_channels(name, k))
                group.prune()
        for name, k in heads.items():  # after the graph's pruning: the attention layers are replaced
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent)
            removed = set(self.removed_channels(name, k))
            setattr(owner, attr, prune_heads(getattr(owner, attr), [h for h in range(self.space.unit(name).channels) if h not in removed]))
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


def _with_gradients(
    model: nn.Module, name: str, calibration: torch.Tensor | Sequence[torch.Tensor] | None, labels: torch.Tensor | None
) -> nn.Module:
    """A copy of ``model`` whose parameters hold the gradient of one pass on ``calibration``."""
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration or [])
    batches = [x for x in batches if len(x)]
    if not batches:
        raise ConfigError(
            f"criterion {name!r} needs calibration images for one gradient pass; pass calibration= to the Pruner "
            f"(or use a proxy with calibration_batches >= 1), or choose a criterion that needs none"
        )
    if labels is not None and len(labels) != sum(len(x) for x in batches):
        raise ConfigError(f"got {len(labels)} calibration labels for {sum(len(x) for x in batches)} calibration images")
    copy_ = copy.deepcopy(model)
    gradient_pass(copy_, batches, labels)
    return copy_


class _HeadSurrogate(nn.Module):
    """An attention layer's projections as Linear layers whose channels Torch-Pruning groups (q, k, v outputs
    with the out projection's inputs), so that any criterion scores them; used to rank heads."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        embed, inner = attention.in_proj_weight.shape[1], attention.in_proj_weight.shape[0] // 3
        bias = attention.in_proj_bias is not None
        self.q, self.k, self.v = (nn.Linear(embed, inner, bias=bias) for _ in range(3))
        self.out = nn.Linear(inner, embed, bias=attention.out_proj.bias is not None)
        w, g = attention.in_proj_weight, attention.in_proj_weight.grad
        b = attention.in_proj_bias
        with torch.no_grad():
            for i, layer in enumerate((self.q, self.k, self.v)):
                layer.weight.copy_(w[i * inner : (i + 1) * inner])
                if g is not None:
                    layer.weight.grad = g[i * inner : (i + 1) * inner].clone()
                if bias:
                    layer.bias.copy_(b[i * inner : (i + 1) * inner])
                    if b.grad is not None:
                        layer.bias.grad = b.grad[i * inner : (i + 1) * inner].clone()
            self.out.weight.copy_(attention.out_proj.weight)
            if attention.out_proj.weight.grad is not None:
                self.out.weight.grad = attention.out_proj.weight.grad.clone()
            if self.out.bias is not None:
                self.out.bias.copy_(attention.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.q(x) + self.k(x) + self.v(x))


def _head_scores(attention: nn.MultiheadAttention, importance: tp.importance.Importance) -> torch.Tensor | None:
    """One score per head: the mean of ``importance``'s scores of the head's channels (None if it scores none)."""
    surrogate = _HeadSurrogate(attention)
    graph = build_dependency_graph(surrogate, torch.zeros(1, surrogate.q.in_features))
    inner = surrogate.q.out_features
    group = graph.get_pruning_group(surrogate.q, tp.prune_linear_out_channels, list(range(inner)))
    with torch.no_grad():
        scores = importance(group)
    return None if scores is None else scores.float().view(attention.num_heads, -1).mean(1)


def _output_shape(model: nn.Module | None, example_inputs: torch.Tensor) -> tuple[int, ...] | None:
    if model is None:
        return None
    try:
        with torch.no_grad():
            return tuple(model.eval()(example_inputs).shape)
    except Exception:  # noqa: BLE001  (a user's network may raise anything once pruned: the unit is unsupported)
        return None
