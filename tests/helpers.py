"""Test helpers: networks by name with example inputs, an independent multiply-add counter, edited policy files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from autoprune.zoo.models import build_model
from autoprune.zoo.weights import load_weights

# name -> example input shape (torchvision models at small inputs keep tests fast)
NETWORKS = {
    "resnet20": (1, 3, 32, 32),
    "resnet56": (1, 3, 32, 32),
    "digits-cnn": (1, 1, 8, 8),
    "torchvision:resnet18": (1, 3, 32, 32),
    "torchvision:mobilenet_v2": (1, 3, 32, 32),
    "torchvision:vgg11_bn": (1, 3, 32, 32),
}


def network(name: str, weights_dir=None) -> tuple[nn.Module, torch.Tensor]:
    """A zoo network in eval mode (shared weights for the CIFAR ResNets when available) and an input."""
    torch.manual_seed(0)
    model = build_model(name)
    if weights_dir is not None and name in ("resnet20", "resnet56"):
        ckpt = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}[name]
        load_weights(model, name, ckpt, weights_dir)
    return model.eval(), torch.randn(NETWORKS[name], generator=torch.Generator().manual_seed(1))


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds counted with forward hooks, independently of fvcore.

    Convolutions: output elements x (input channels / groups) x kernel area. Linear: batch x in x out.
    Eval-mode batch norm: 2 per element with affine parameters (fvcore's convention for fused
    scale and shift). Adaptive average pooling: one per input element (fvcore's convention).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.BatchNorm2d):
            total += output.numel() * (2 if module.affine else 1)

    class PoolCounter(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            nonlocal total
            if func is F.adaptive_avg_pool2d:  # as a module or called functionally
                total += args[0].numel()
            return func(*args, **(kwargs or {}))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad(), PoolCounter():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def rename_first_unit(doc: dict[str, Any]) -> None:
    """Edit a policy document so that its first unit names no layer of the network."""
    first = next(iter(doc["channels"]))
    for key in ("channels", "ratios"):
        doc[key] = {("no_such_unit" if name == first else name): v for name, v in doc[key].items()}


def edited_policy(policy: Path | dict[str, Any], path: Path, edit: Callable[[dict[str, Any]], None]) -> str:
    """Write ``edit`` applied to a copy of a policy (a file or its document) to ``path``; returns the path."""
    doc = json.loads(policy.read_text() if isinstance(policy, Path) else json.dumps(policy))
    edit(doc)
    path.write_text(json.dumps(doc))
    return str(path)
