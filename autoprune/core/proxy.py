"""Accuracy proxy: recalibrate BatchNorm statistics on training batches, then score a held-out split.

EagleEye (Li et al. 2020) showed that re-estimating BN statistics after pruning makes the accuracy
of an un-fine-tuned network track its accuracy after fine-tuning.

The held-out images are kept in a seeded random order, so that any prefix of them is a random
sample: racing (:mod:`autoprune.core.racing`) scores a candidate on growing prefixes and stops it
early when it cannot beat the incumbent.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.zoo.images import ImageSet

PROXY_KINDS = ("accuracy", "agreement")
FORWARD_PATHS = ("fast", "plain")


class NonFiniteOutput(ValueError):
    """A network produced NaN or infinite outputs."""


def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor], resume: bool = False) -> None:
    """Re-estimate every BatchNorm layer's running statistics as the plain average over ``batches``.

    With ``resume`` the average continues over the batches seen by the last call (so recalibrating on two
    batches, then on two more with ``resume``, gives exactly the statistics of the four at once). With no
    batches the statistics are left as they are. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        if not resume:
            m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """The network with every BatchNorm that follows a convolution folded into it (eval mode; same outputs up to
    rounding). A network torch.fx cannot trace is returned unchanged."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval())
    except Exception:  # noqa: BLE001  (torch.fx raises many types for code it cannot trace)
        return model


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
        calibration_images: recalibrate on this many images instead (the last batch may be partial).
        device: where to run.
        seed: chooses the recalibration batches (the same for every candidate) and the order of the held-out images.
        forward: ``fast`` runs networks in channels-last memory format and scores a recalibrated network with
            BatchNorm folded into its convolutions under ``torch.inference_mode``; ``plain`` scores it as it is
            under ``torch.no_grad`` (the path before racing, kept so that benchmarks can measure both; see
            ``results/evaluation-cost-resnet56-cifar10.md`` for what each step saves).
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
        forward: str = "fast",
        calibration_images: int | None = None,
    ) -> None:
        if kind not in PROXY_KINDS:
            raise ConfigError(f"unknown proxy {kind!r}; choose one of {', '.join(PROXY_KINDS)}")
        if forward not in FORWARD_PATHS:
            raise ConfigError(f"unknown proxy forward path {forward!r}; choose one of {', '.join(FORWARD_PATHS)}")
        if calibration_batches < 0 or batch_size < 1:
            raise ConfigError(f"calibration_batches must be >= 0 and batch_size >= 1, got {calibration_batches}, {batch_size}")
        if calibration_images is not None and calibration_images < 0:
            raise ConfigError(f"calibration images must be >= 0, got {calibration_images}")
        self.kind = kind
        self.batch_size = batch_size
        self.forward = forward
        self.device = torch.device(device)
        generator = torch.Generator().manual_seed(seed)
        wanted = calibration_batches * batch_size if calibration_images is None else calibration_images
        n = min(len(calibration), wanted)
        idx = torch.randperm(len(calibration), generator=generator)[:n]
        images, _ = calibration.batch(idx, self.device)
        self.calibration = [self._layout(x) for x in images.split(batch_size)] if n else []
        images, self.labels = held_out.batch(torch.randperm(len(held_out), generator=generator), self.device)
        self.images = self._layout(images)
        self.targets = self.labels

    @property
    def channels_last(self) -> bool:
        """Whether networks and images run in channels-last memory format (the ``fast`` path)."""
        return self.forward == "fast"

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last and images.dim() == 4 else images

    def on(self, held_out: ImageSet) -> Proxy:
        """The same proxy (kind, recalibration batches, forward path) scoring other held-out images, in their order
        (an ``agreement`` proxy needs :meth:`use_reference` again)."""
        other = copy.copy(self)
        images, other.labels = held_out.batch(slice(None), self.device)
        other.images = self._layout(images)
        other.targets = other.labels
        return other

    def extended(self, more: ImageSet) -> Proxy:
        """The same proxy scoring its own images followed by ``more``, in their order (an ``agreement`` proxy needs
        :meth:`use_reference` again)."""
        other = self.on(more)
        other.images = torch.cat([self.images, other.images])
        other.labels = other.targets = torch.cat([self.labels, other.labels])
        return other

    def subset(self, index: torch.Tensor) -> Proxy:
        """The same proxy scoring only its images at ``index`` (their targets included)."""
        other = copy.copy(self)
        other.images, other.labels, other.targets = self.images[index], self.labels[index], self.targets[index]
        return other

    def use_reference(self, dense: nn.Module) -> None:
        """For the ``agreement`` proxy: take the dense network's predictions as targets."""
        if self.kind == "agreement":
            self.targets = predict(dense.to(self.device), self.images, self.batch_size)

    def __len__(self) -> int:
        return len(self.labels)

    def prepare(self, model: nn.Module, recalibrate: bool = True, batches: tuple[int, int] | None = None) -> nn.Module:
        """The network ready to score: BatchNorm recalibrated (when asked), folded on the ``fast`` path.

        ``batches`` (first, stop) recalibrates on those calibration batches only, continuing the average of the
        batches before ``first`` (a staged recalibration; default: all of them, from scratch). The given network
        keeps the recalibrated statistics (and may be changed otherwise); score the returned one, a folded copy on
        the ``fast`` path.
        """
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if recalibrate:
            first, stop = batches or (0, len(self.calibration))
            recalibrate_batchnorm(model, self.calibration[first:stop], resume=first > 0)
        model.eval()
        return fold_batchnorm(model) if self.forward == "fast" else model

    def correct(self, model: nn.Module, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Whether ``model`` (from :meth:`prepare`) gets each held-out image in ``start:stop`` right (booleans).

        Raises:
            NonFiniteOutput: if the network outputs NaN or infinity for any of those images.
        """
        images, targets = self.images[start:stop], self.targets[start:stop]
        context = torch.inference_mode() if self.forward == "fast" else torch.no_grad()
        hits = []
        with context:
            for x, y in zip(images.split(self.batch_size), targets.split(self.batch_size)):
                logits = model(x)
                if not torch.isfinite(logits).all():
                    raise NonFiniteOutput("the network's outputs are not finite (NaN or infinity)")
                hits.append(logits.argmax(1) == y)
        return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)

    def score(self, model: nn.Module, recalibrate: bool = True) -> ProxyScore:
        """Recalibrate BN (when asked), then measure top-1 accuracy (or agreement) on the whole proxy split."""
        start = time.perf_counter()
        prepared = self.prepare(model, recalibrate)
        mid = time.perf_counter()
        accuracy = self.correct(prepared).float().mean().item()
        return ProxyScore(accuracy, mid - start, time.perf_counter() - mid)
