"""Torch-Pruning's dependency graph, with pruners for autoprune's own layer types registered."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from autoprune.zoo.cifar_resnet import ChannelScatterShortcut


class ChannelScatterPruner(tp.pruner.BasePruningFunc):
    """Prunes the option-A shortcut: its input and output channels are removed independently."""

    TARGET_MODULES = ChannelScatterShortcut

    def prune_out_channels(self, layer: ChannelScatterShortcut, idxs: Sequence[int]) -> ChannelScatterShortcut:
        keep = _kept(layer.out_channels, idxs)
        pairs = keep[layer.dst] >= 0
        layer.src, layer.dst = layer.src[pairs], keep[layer.dst[pairs]]
        layer.out_channels -= len(set(idxs))
        return layer

    def prune_in_channels(self, layer: ChannelScatterShortcut, idxs: Sequence[int]) -> ChannelScatterShortcut:
        keep = _kept(layer.in_channels, idxs)
        pairs = keep[layer.src] >= 0
        layer.src, layer.dst = keep[layer.src[pairs]], layer.dst[pairs]
        layer.in_channels -= len(set(idxs))
        return layer

    def get_out_channels(self, layer: ChannelScatterShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelScatterShortcut) -> int:
        return layer.in_channels


def _kept(n: int, removed: Sequence[int]) -> torch.Tensor:
    """Map old channel index -> new index, or -1 where the channel is removed."""
    alive = torch.ones(n, dtype=torch.bool)
    alive[list(removed)] = False
    new = torch.full((n,), -1, dtype=torch.long)
    new[alive] = torch.arange(int(alive.sum()))
    return new


CUSTOMIZED_PRUNERS: dict[type, tp.pruner.BasePruningFunc] = {ChannelScatterShortcut: ChannelScatterPruner()}


def build_dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a Torch-Pruning dependency graph (autograd is switched on for the trace)."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, customized_pruners=dict(CUSTOMIZED_PRUNERS), verbose=False
        )


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise convolution (its input and output channels are one set)."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.out_channels


def member_role(graph: tp.DependencyGraph, handler: object) -> str:
    """How a group prunes a member: ``out`` or ``in`` channels, or ``both`` for in-out coupled layers."""
    is_out, is_in = graph.is_out_channel_pruning_fn(handler), graph.is_in_channel_pruning_fn(handler)
    if is_out and is_in:
        return "both"
    return "out" if is_out else "in"
