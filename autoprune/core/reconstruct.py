"""Channel reconstruction (AMC, He et al. 2018): recover a pruned network without training.

When a unit loses output channels, every layer that consumes them (role ``in`` in the unit's members)
loses input channels. Reconstruction re-solves each such consumer's remaining weights by ridge least
squares so that its outputs match the dense network's on a few calibration images:

    min_W ||Y_dense - A_pruned W||^2 + lambda ||W - W_0||^2

where ``A_pruned`` holds the consumer's input patches in the pruned network (unfolded at a few sampled
output positions per image), ``Y_dense`` the dense consumer's outputs at the same positions and
``W_0`` the consumer's pruned weights (the ridge pulls towards them, so a badly conditioned layer stays
close to where it was). Consumers are solved in forward order within one pass of the pruned network:
a forward pre-hook solves a consumer from the inputs it is about to receive, so that every layer sees
the already reconstructed layers before it. The dense targets are computed once.

Convolutions with ``groups == 1`` and zero padding, and linear layers, are reconstructed; other
consumers (grouped convolutions, depthwise convolutions, which are in-out coupled anyway) keep their
weights.

A reconstructed network keeps the dense network's BatchNorm statistics: the consumers now reproduce the
dense activations those statistics describe. Re-estimating them from a few hundred calibration images
only adds noise (on ResNet-56 it costs about 0.7 points, as it does on the dense network), so the
Evaluator does not recalibrate a reconstructed network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.core.graph import build_dependency_graph
from autoprune.core.prune import Pruner
from autoprune.core.space import SearchSpace
from autoprune.errors import ConfigError


@dataclass
class _Target:
    """The dense consumer's outputs at the sampled positions."""

    outputs: torch.Tensor  # (rows, out_channels)
    positions: torch.Tensor | None  # (N, P) flat output positions for convolutions, None for linear layers
    out_size: tuple[int, int] | None  # (Ho, Wo) for convolutions


class Reconstructor:
    """Reconstructs the consumers of pruned channels so that their outputs match the dense network's.

    Args:
        model: the dense network (never modified).
        example_inputs: an input batch to trace the dependency graph.
        space: the search space of ``model``.
        pruner: the pruner that builds the pruned networks (it says which channels each unit loses).
        images: calibration images (one batch, normalised, on the device the networks run on).
        points: output positions sampled per image and convolution (AMC samples a few per image).
        ridge: ridge strength, relative to the mean diagonal of ``A^T A``.
        seed: chooses the sampled positions.

    Raises:
        ConfigError: for no calibration images, ``points < 1`` or a negative ``ridge``.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        space: SearchSpace,
        pruner: Pruner,
        images: torch.Tensor,
        points: int = 16,
        ridge: float = 1e-3,
        seed: int = 0,
    ) -> None:
        if len(images) == 0:
            raise ConfigError("reconstruction needs calibration images; set proxy calibration_batches >= 1")
        if points < 1 or ridge < 0:
            raise ConfigError(f"reconstruction needs points >= 1 and ridge >= 0, got points={points}, ridge={ridge}")
        self.space = space
        self.pruner = pruner
        self.images = images
        self.points = points
        self.ridge = ridge
        self._graph = build_dependency_graph(model, example_inputs)
        self._modules = dict(model.named_modules())
        self._names = {m: n for n, m in self._modules.items()}
        consumers = {name for u in space.units for name, role in u.members if role == "in"}
        self._consumers = {n for n in consumers if _solvable(self._modules[n])}
        self._targets = self._dense_targets(model, points, seed)

    def consumers(self, kept: Mapping[str, int]) -> list[str]:
        """Names of the layers reconstructed for ``kept``: the solvable consumers of pruned units."""
        pruned = {u.name for u in self.space.units if kept.get(u.name, u.channels) < u.channels}
        return sorted({name for u in self.space.units if u.name in pruned
                       for name, role in u.members if role == "in" and name in self._consumers})

    def __call__(self, network: nn.Module, kept: Mapping[str, int]) -> None:
        """Reconstruct, in place, the consumers of the units ``kept`` prunes in ``network`` (BN in eval mode)."""
        names = self.consumers(kept)
        if not names:
            return
        out_kept = self._kept_outputs(kept)
        modules = dict(network.named_modules())
        handles: dict[str, torch.utils.hooks.RemovableHandle] = {}

        def make_hook(name: str):
            def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                handles.pop(name).remove()  # solve once, at the first call
                self._solve(module, args[0], self._targets[name], out_kept.get(name))
            return hook

        for name in names:
            handles[name] = modules[name].register_forward_pre_hook(make_hook(name))
        network.eval()
        try:
            with torch.no_grad():
                network(self.images)
        finally:
            for handle in handles.values():
                handle.remove()

    def _kept_outputs(self, kept: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """For consumers that also lose output channels: the indices of the outputs they keep."""
        result = {}
        for unit in self.space.units:
            if kept.get(unit.name, unit.channels) >= unit.channels:
                continue
            if not any(role in ("out", "both") and name in self._consumers for name, role in unit.members):
                continue
            root = self._modules[unit.name]
            removed = self.pruner.removed_channels(unit.name, kept[unit.name])
            group = self._graph.get_pruning_group(root, self._graph.get_pruner_of_module(root).prune_out_channels, removed)
            for dep, idxs in group:
                name = self._names.get(dep.target.module)
                if name in self._consumers and self._graph.is_out_channel_pruning_fn(dep.handler):
                    alive = torch.ones(_out_channels(dep.target.module), dtype=torch.bool)
                    alive[list(idxs)] = False
                    result[name] = alive.nonzero().flatten()
        return result

    def _dense_targets(self, model: nn.Module, points: int, seed: int) -> dict[str, _Target]:
        generator = torch.Generator().manual_seed(seed)
        targets: dict[str, _Target] = {}

        def make_hook(name: str):
            def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                if name in targets:
                    return
                if isinstance(module, nn.Linear):
                    targets[name] = _Target(output.reshape(-1, output.shape[-1]).float(), None, None)
                    return
                n, c, ho, wo = output.shape
                p = min(points, ho * wo)
                positions = torch.rand(n, ho * wo, generator=generator).argsort(1)[:, :p].to(output.device)
                flat = output.flatten(2)  # (N, C, L)
                picked = flat.gather(2, positions.unsqueeze(1).expand(n, c, p))  # (N, C, P)
                targets[name] = _Target(picked.permute(0, 2, 1).reshape(-1, c).float(), positions, (ho, wo))
            return hook

        dense = copy.deepcopy(model).to(self.images.device).eval()  # the caller's model stays where it is
        modules = dict(dense.named_modules())
        for name in sorted(self._consumers):
            modules[name].register_forward_hook(make_hook(name))
        with torch.no_grad():
            dense(self.images)
        return targets

    def _solve(self, module: nn.Module, x: torch.Tensor, target: _Target, out_kept: torch.Tensor | None) -> None:
        y = target.outputs if out_kept is None else target.outputs[:, out_kept.to(target.outputs.device)]
        if isinstance(module, nn.Linear):
            a = x.reshape(-1, x.shape[-1])
        else:
            a = _patches(module, x, target.positions, target.out_size)
        w0 = module.weight.reshape(module.weight.shape[0], -1)
        if module.bias is not None:
            a = torch.cat([a, a.new_ones(len(a), 1)], 1)
            w0 = torch.cat([w0, module.bias.unsqueeze(1)], 1)
        ata, aty = (a.T @ a).double(), (a.T @ y).double()
        lam = self.ridge * ata.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(len(ata), dtype=ata.dtype, device=ata.device)
        w = torch.linalg.solve(ata + lam * eye, aty + lam * w0.double().T).T.to(module.weight.dtype)
        if module.bias is not None:
            module.bias.copy_(w[:, -1])
            w = w[:, :-1]
        module.weight.copy_(w.reshape(module.weight.shape))


def _solvable(module: nn.Module) -> bool:
    """Whether a consumer can be reconstructed: a linear layer or an ungrouped, zero-padded 2-d convolution."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _patches(conv: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """The input patches of ``conv`` at the flat output ``positions`` (N, P): a (N*P, C*kh*kw) matrix."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    n, p = positions.shape
    xp = F.pad(x, (pw, pw, ph, ph))
    oy, ox = positions // out_size[1], positions % out_size[1]
    iy = (oy * sh).unsqueeze(-1) + torch.arange(kh, device=x.device) * dh  # (N, P, kh)
    ix = (ox * sw).unsqueeze(-1) + torch.arange(kw, device=x.device) * dw  # (N, P, kw)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    patches = xp[batch, :, iy.unsqueeze(-1), ix.unsqueeze(-2)]  # (N, P, kh, kw, C)
    return patches.permute(0, 1, 4, 2, 3).reshape(n * p, -1)
