"""Accuracy proxy: recalibrate BatchNorm statistics on training batches, then score a held-out split.

EagleEye (Li et al. 2020) showed that re-estimating BN statistics after pruning makes the accuracy
of an un-fine-tuned network track its accuracy after fine-tuning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.zoo.images import ImageSet

PROXY_KINDS = ("accuracy", "agreement")


def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm layer's running statistics as the plain average over ``batches``.

    With no batches the statistics are left as they are. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def predict(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Top-1 class of every image (the model is put in eval mode)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) for x in images.split(batch_size)])


@dataclass
class ProxyScore:
    """A proxy measurement and the seconds its two forward phases took."""

    accuracy: float
    recalibrate_s: float
    score_s: float


class Proxy:
    """Scores pruned networks on a fixed held-out set.

    Args:
        calibration: training images for BN recalibration.
        held_out: the proxy split (data the network never trained on).
        kind: ``accuracy`` (top-1 against labels) or ``agreement`` (top-1 agreement with the dense
            network's predictions: label-free).
        calibration_batches: number of recalibration batches (K).
        batch_size: batch size of every forward pass.
        device: where to run.
        seed: chooses the recalibration batches (the same for every candidate).
    """

    def __init__(
        self,
        calibration: ImageSet,
        held_out: ImageSet,
        kind: str = "accuracy",
        calibration_batches: int = 10,
        batch_size: int = 128,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if kind not in PROXY_KINDS:
            raise ConfigError(f"unknown proxy {kind!r}; choose one of {', '.join(PROXY_KINDS)}")
        if calibration_batches < 0 or batch_size < 1:
            raise ConfigError(f"calibration_batches must be >= 0 and batch_size >= 1, got {calibration_batches}, {batch_size}")
        self.kind = kind
        self.batch_size = batch_size
        self.device = torch.device(device)
        n = min(len(calibration), calibration_batches * batch_size)
        idx = torch.randperm(len(calibration), generator=torch.Generator().manual_seed(seed))[:n]
        images, _ = calibration.batch(idx, self.device)
        self.calibration = list(images.split(batch_size)) if n else []
        self.images, self.labels = held_out.batch(slice(None), self.device)
        self.targets = self.labels

    def use_reference(self, dense: nn.Module) -> None:
        """For the ``agreement`` proxy: take the dense network's predictions as targets."""
        if self.kind == "agreement":
            self.targets = predict(dense.to(self.device), self.images, self.batch_size)

    def __len__(self) -> int:
        return len(self.labels)

    def score(self, model: nn.Module, recalibrate: bool = True) -> ProxyScore:
        """Recalibrate BN (when asked), then measure top-1 accuracy (or agreement) on the proxy split."""
        model = model.to(self.device)
        start = time.perf_counter()
        if recalibrate:
            recalibrate_batchnorm(model, self.calibration)
        mid = time.perf_counter()
        correct = (predict(model, self.images, self.batch_size) == self.targets).float().mean().item()
        return ProxyScore(correct, mid - start, time.perf_counter() - mid)
