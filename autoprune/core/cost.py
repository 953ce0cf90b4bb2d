"""Cost of a (pruned) network: FLOPs and parameters by fvcore, latency measured on a device.

fvcore counts one multiply-add as one flop, so every FLOPs figure autoprune shows is MACs.
:class:`CostModel` predicts the fvcore counts of any policy without building the network; it is
calibrated from fvcore's per-module counts on the dense network and is exact for the layers
Torch-Pruning prunes (tests check it against fvcore on pruned networks).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoprune.core.space import SearchSpace
from autoprune.core.threads import torch_threads
from autoprune.errors import ConfigError

FLOPS_LABEL = "FLOPs (MACs, fvcore)"


@dataclass
class LatencySettings:
    """How latency is measured: device, CPU threads, repeats and warm-up passes."""

    device: str = "cpu"
    threads: int | None = 1
    repeats: int = 30
    warmup: int = 5
    batch_size: int = 1


def fvcore_flops(model: nn.Module, example_inputs: torch.Tensor, by_module: bool = False) -> int | dict[str, int]:
    """fvcore's FLOP count (multiply-adds) of ``model`` on ``example_inputs``; per module if asked."""
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, example_inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        result = analysis.by_module() if by_module else analysis.total()
    model.train(was_training)
    return {k: int(v) for k, v in result.items()} if by_module else int(result)


def count_params(model: nn.Module) -> int:
    """Number of parameters (what fvcore's ``parameter_count`` reports for the whole model)."""
    return sum(p.numel() for p in model.parameters())


class CostModel:
    """Predicts fvcore FLOPs and parameter counts of any policy's pruned network in microseconds.

    Every leaf module's dense FLOPs and each parameter tensor scale with the kept fraction of the
    unit that prunes its output channels and of the unit that prunes its input channels (an attention
    layer of a heads unit is priced whole, linear in its kept heads: fvcore counts its projections,
    and whatever it counts of the attention product also scales with the heads at a fixed sequence length). fvcore
    counts outside leaf modules (functional pooling, say) are calibrated by pruning each unit once.

    Args:
        model: the dense network.
        example_inputs: the input FLOPs are counted on.
        space: the search space whose units vary.
        prune: builds a pruned network from kept channels (used only to calibrate non-module counts).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, space: SearchSpace, prune=None) -> None:
        self.space = space
        index = {u.name: i for i, u in enumerate(space.units)}
        self._channels = np.array([u.channels for u in space.units] + [1], dtype=np.float64)
        roles: dict[str, dict[str, int]] = {}
        for u in space.units:
            for module_name, role in u.members:
                roles.setdefault(module_name, {})[role] = index[u.name]
        none = len(space.units)  # index of the constant factor 1

        per_module = fvcore_flops(model, example_inputs, by_module=True)
        self.dense_flops = per_module[""]
        # FLOPs are priced per leaf module, except a unit member with submodules (an attention layer, whose
        # count, its out_proj's included, scales with its kept heads): priced whole, its submodules skipped
        modules = dict(model.named_modules())
        whole = {n for n in roles if n in modules and any(True for _ in modules[n].children())}
        leaves = [n for n, m in modules.items() if n in whole or (
            not any(True for _ in m.children()) and not any(n.startswith(f"{w}.") for w in whole))]
        flops, f_out, f_in = [], [], []
        for name in leaves:
            r = roles.get(name)
            if r is None:  # not pruned by any unit: counted in the calibrated residual
                continue
            flops.append(per_module.get(name, 0))
            f_out.append(r.get("both", r.get("out", none)))
            f_in.append(none if "both" in r else r.get("in", none))
        self._flops = np.array(flops, dtype=np.float64)
        self._f_out, self._f_in = np.array(f_out), np.array(f_in)

        params, p_out, p_in = [], [], []
        for name, module in model.named_modules():
            r = roles.get(name, {})
            for p in module.parameters(recurse=False):
                params.append(p.numel())
                p_out.append(r.get("both", r.get("out", none)))
                p_in.append(r.get("in", none) if p.dim() >= 2 and "both" not in r else none)
        self._params = np.array(params, dtype=np.float64)
        self._p_out, self._p_in = np.array(p_out), np.array(p_in)
        self.dense_params = int(self._params.sum())

        self._residual = float(self.dense_flops - self._flops.sum())
        self._residual_slope = np.zeros(len(space.units) + 1)
        if self._residual and prune is not None:
            self._calibrate_residual(example_inputs, prune)

    def _fractions(self, kept: Mapping[str, int]) -> np.ndarray:
        counts = np.array([kept.get(u.name, u.channels) for u in self.space.units] + [1], dtype=np.float64)
        return counts / self._channels

    def flops(self, kept: Mapping[str, int]) -> int:
        """fvcore FLOPs (MACs) of the network keeping ``kept[unit]`` channels per unit."""
        frac = self._fractions(kept)
        leaf = float(np.dot(self._flops, frac[self._f_out] * frac[self._f_in]))
        counts = frac * self._channels
        residual = self._residual + float(np.dot(self._residual_slope, counts - self._channels))
        return round(leaf + residual)

    def params(self, kept: Mapping[str, int]) -> int:
        """Parameter count of the network keeping ``kept[unit]`` channels per unit."""
        frac = self._fractions(kept)
        return round(float(np.dot(self._params, frac[self._p_out] * frac[self._p_in])))

    def _calibrate_residual(self, example_inputs: torch.Tensor, prune) -> None:
        """Fit FLOPs counted outside pruned leaf modules as linear in each unit's channel count.

        Such counts (a functional pooling over a unit's channels, say) only grow with channels, so a
        set of units probed together whose prediction already matches fvcore holds no unit that
        changes them; sets that do not match are split in halves (group testing), so few probes
        are needed when few units matter.
        """
        halved = {u.name: max(1, u.channels // 2) for u in self.space.units if u.channels > 1}
        index = {u.name: i for i, u in enumerate(self.space.units)}

        def probe(names: list[str]) -> None:
            kept = {n: halved[n] for n in names}
            error = fvcore_flops(prune(kept), example_inputs) - self.flops(kept)
            if error == 0:
                return
            if len(names) == 1:
                unit = self.space.unit(names[0])
                self._residual_slope[index[names[0]]] = error / (halved[names[0]] - unit.channels)
                return
            probe(names[: len(names) // 2])
            probe(names[len(names) // 2 :])

        if halved:
            probe(list(halved))


def resolve_device(name: str | torch.device) -> torch.device:
    """The device ``name`` names, checked to be usable here (CPU, or CUDA when present).

    Raises:
        ConfigError: for an unknown device, or one that cannot be used here.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {str(name)!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r} cannot be used: no CUDA device is available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(name)!r} is not supported; use cpu or cuda")
    return device


def measure_latency(
    model: nn.Module,
    example_inputs: torch.Tensor,
    device: torch.device | str = "cpu",
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> float:
    """Median wall time of one forward pass, in milliseconds.

    Args:
        model: the network (moved to ``device`` for the measurement).
        example_inputs: the batch to time.
        device: where to run; CUDA timings synchronise before reading the clock.
        repeats: timed forward passes; the median is returned.
        warmup: untimed passes first.
        threads: CPU threads during the measurement (default: leave as set).
    """
    (times,) = time_forward_passes([model], example_inputs, device, repeats, warmup, threads)
    return 1e3 * statistics.median(times)


def time_forward_passes(
    models: list[nn.Module],
    example_inputs: torch.Tensor,
    device: torch.device | str,
    repeats: int,
    warmup: int,
    threads: int | None,
) -> list[list[float]]:
    """Wall times (s) of ``repeats`` forward passes of each model, the models run in turn at every repeat (so that
    they share the machine's load), after ``warmup`` untimed rounds; the models are moved to ``device``."""
    device = torch.device(device)
    models = [m.to(device).eval() for m in models]
    x = example_inputs.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in models]
    with torch_threads(threads), torch.inference_mode():
        for i in range(warmup + repeats):
            for model, model_times in zip(models, times):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                if i >= warmup:
                    model_times.append(time.perf_counter() - start)
    return times
