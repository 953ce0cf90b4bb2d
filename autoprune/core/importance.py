"""Channel-importance criteria: one registry from ``--criterion`` names to Torch-Pruning importance objects.

A criterion is either a registered name or any :class:`torch_pruning.importance.Importance` instance.
Criteria that read weight gradients (``taylor``) need one forward and backward pass on calibration
images before they can score; :func:`gradient_pass` does it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.errors import ConfigError


@dataclass(frozen=True)
class Criterion:
    """A registered criterion.

    Attributes:
        factory: builds a fresh importance object.
        description: one line for help texts.
        needs_gradients: whether the importance reads ``.grad`` of weights (filled by :func:`gradient_pass`).
    """

    factory: Callable[[], tp.importance.Importance]
    description: str = ""
    needs_gradients: bool = False


CRITERIA: dict[str, Criterion] = {}


def register_criterion(
    name: str, factory: Callable[[], tp.importance.Importance], description: str = "", needs_gradients: bool = False
) -> None:
    """Register ``factory`` as criterion ``name`` (it then shows in ``--criterion`` choices built afterwards).

    Raises:
        ConfigError: if ``name`` is already registered.
    """
    if name in CRITERIA:
        raise ConfigError(f"channel criterion {name!r} is already registered")
    CRITERIA[name] = Criterion(factory, description, needs_gradients)


register_criterion("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1, normalizer=None),
                   "sum of absolute weights over the channel's group")
register_criterion("l2", lambda: tp.importance.GroupMagnitudeImportance(p=2, normalizer=None),
                   "sum of squared weights over the channel's group")
register_criterion("bn_scale", lambda: tp.importance.BNScaleImportance(normalizer=None),
                   "absolute BatchNorm scale (network slimming)")
register_criterion("lamp", lambda: tp.importance.LAMPImportance(p=2),
                   "layer-adaptive magnitude score (LAMP, squared weights)")
register_criterion("taylor", lambda: tp.importance.TaylorImportance(normalizer=None),
                   "first-order Taylor |w * dL/dw| from one gradient pass on calibration images", needs_gradients=True)


def _entry(criterion: str) -> Criterion:
    try:
        return CRITERIA[criterion]
    except KeyError:
        raise ConfigError(f"unknown channel criterion {criterion!r}; choose one of {', '.join(CRITERIA)}") from None


def importance_of(criterion: str | tp.importance.Importance) -> tp.importance.Importance:
    """Torch-Pruning's importance for a registered name, or ``criterion`` itself when it is an importance object.

    Raises:
        ConfigError: for an unknown name, listing the registered ones.
    """
    if isinstance(criterion, tp.importance.Importance):
        return criterion
    return _entry(criterion).factory()


def criterion_name(criterion: str | tp.importance.Importance) -> str:
    """The name a policy records: the registered name, or the class name of an importance object.

    A class name cannot be re-applied by name (``--criterion``); only the registered names can.
    """
    if isinstance(criterion, tp.importance.Importance):
        return type(criterion).__name__
    _entry(criterion)
    return criterion


def needs_gradients(criterion: str | tp.importance.Importance) -> bool:
    """Whether ``criterion`` reads weight gradients (a registered flag; Taylor importance objects too)."""
    if isinstance(criterion, tp.importance.Importance):
        return isinstance(criterion, tp.importance.GroupTaylorImportance)
    return _entry(criterion).needs_gradients


def gradient_pass(model: nn.Module, batches: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> None:
    """Fill ``.grad`` of every parameter of ``model`` with the gradient of the mean cross-entropy over ``batches``.

    The loss is on ``labels`` (aligned with the concatenated batches) or, without labels, on the model's own
    top-1 predictions. One forward and backward pass per batch in eval mode; earlier gradients are discarded.
    ``model`` is changed (gradients, ``requires_grad``): pass a copy.
    """
    device = next(model.parameters()).device
    total = sum(len(x) for x in batches)
    model.eval()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    start = 0
    with torch.enable_grad():
        for x in batches:
            out = model(x.to(device))
            target = out.detach().argmax(1) if labels is None else labels[start : start + len(x)].to(device)
            (F.cross_entropy(out, target, reduction="sum") / total).backward()
            start += len(x)
