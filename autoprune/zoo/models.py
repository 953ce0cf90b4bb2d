"""Networks by name: CIFAR ResNets, the digits demo CNN and torchvision classifiers."""

from __future__ import annotations

import re

from torch import nn

from autoprune.errors import ConfigError
from autoprune.zoo.cifar_resnet import CIFAR_RESNET_DEPTHS, CifarResNet
from autoprune.zoo.digits import DigitsCNN

TORCHVISION_PREFIX = "torchvision:"


def zoo_names() -> list[str]:
    """The model names :func:`build_model` accepts (torchvision ones as ``torchvision:NAME``)."""
    return [f"resnet{d}" for d in CIFAR_RESNET_DEPTHS] + ["digits-cnn", f"{TORCHVISION_PREFIX}NAME"]


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build an untrained network by zoo name.

    Args:
        name: ``resnet20`` ... ``resnet110`` (CIFAR, option-A), ``digits-cnn``, or
            ``torchvision:NAME`` for any torchvision classification model (``torchvision:resnet18``).
        num_classes: size of the classifier output.

    Raises:
        ConfigError: if the name is not in the zoo.
    """
    if m := re.fullmatch(r"resnet(\d+)", name):
        if int(m[1]) in CIFAR_RESNET_DEPTHS:
            return CifarResNet(int(m[1]), num_classes)
    if name == "digits-cnn":
        return DigitsCNN(num_classes)
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        arch = name.removeprefix(TORCHVISION_PREFIX)
        available = torchvision.models.list_models(module=torchvision.models)
        if arch not in available:
            raise ConfigError(
                f"unknown torchvision model {arch!r}; classification models include "
                f"{', '.join(a for a in available if a in ('resnet18', 'resnet50', 'mobilenet_v2', 'vgg11_bn', 'efficientnet_b0'))}, ..."
            )
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(zoo_names())}")
