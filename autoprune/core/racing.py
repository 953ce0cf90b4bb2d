"""Racing: score a candidate on growing prefixes of the proxy split and stop it once a paired comparison with
the incumbent says it cannot win.

Both networks are scored on the same images, so the comparison is paired: each image gives a difference
``d = hit(candidate) - hit(incumbent)`` in {-1, 0, 1}, and the noise of which images were drawn cancels.
After ``n`` of the ``N`` proxy images, with mean difference ``m`` and spread ``s``, the candidate's lead over
the incumbent on all ``N`` images is predicted as ``N m`` with standard error ``s sqrt(N (N - n) / n)``
(the unseen images' sum plus the uncertainty of ``m``); the candidate stops when even the upper bound at
the chosen confidence is below zero. A candidate that reaches the last stage is scored on every image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from autoprune.errors import ConfigError

DEFAULT_STAGES = (0.25, 0.5)
"""Default racing stages, as fractions of the proxy images (the whole split is always the last stage)."""
DEFAULT_CONFIDENCE = 0.95
DEFAULT_EARLY_BATCHES = 1
"""BatchNorm recalibration batches before the last stage (one batch of the proxy's batch size), where a full
evaluation has at least :data:`MIN_BATCHES_LEFT` more; ``results/evaluation-cost-resnet56-cifar10.md`` measures
what this saves and how it ranks candidates."""
MIN_BATCHES_LEFT = 2
"""Early recalibration is used only when it leaves at least this many batches for the last stage: saving one
batch per stopped candidate does not pay for scoring every finisher's first images again (measured on ResNet-56
with 2 batches of 128: 2.16 s per candidate with one early batch against 1.99 s with both; with 4 batches one
early batch was the cheaper, 2.97 s against 3.12 s)."""


@dataclass(frozen=True)
class Racing:
    """When candidates are compared with the incumbent, and how sure a stop must be.

    Attributes:
        stages: numbers of proxy images after which a candidate is compared, ascending; the last is the
            whole proxy split.
        confidence: one-sided confidence that a stopped candidate would not have beaten the incumbent.
        early_batches: BatchNorm recalibration batches used before the last stage (None: all of them). A
            candidate that goes on to the last stage is recalibrated on the rest (the average continues, so its
            statistics are exactly those of every batch) and scored again from the first image.
    """

    stages: tuple[int, ...]
    confidence: float = DEFAULT_CONFIDENCE
    early_batches: int | None = None

    @classmethod
    def parse(cls, text: str, proxy_images: int, confidence: float = DEFAULT_CONFIDENCE,
              early_batches: int | None = DEFAULT_EARLY_BATCHES) -> Racing | None:
        """``on`` (quarter, half, all of the proxy images), ``off`` (None) or image counts such as ``250,500``.

        Raises:
            ConfigError: for anything else, counts that do not ascend, or confidence outside (0.5, 1).
        """
        text = str(text).strip().lower()
        if text == "off":
            return None
        if not 0.5 < confidence < 1:
            raise ConfigError(f"racing confidence must be between 0.5 and 1, got {confidence}")
        if text == "on":
            counts = [max(1, round(f * proxy_images)) for f in DEFAULT_STAGES]
        else:
            try:
                counts = [int(part) for part in text.split(",") if part.strip()]
            except ValueError:
                counts = []
            if not counts or any(c < 1 for c in counts):
                raise ConfigError(f"--racing {text!r}: write on, off, or ascending image counts such as 250,500")
        counts = sorted({min(c, proxy_images) for c in counts} | {proxy_images})
        return cls(tuple(counts), confidence, early_batches)

    def batches_before_last(self, batches: int) -> int:
        """BatchNorm recalibration batches behind the scores before the last stage, when a full evaluation uses
        ``batches``: the early batches if they leave at least :data:`MIN_BATCHES_LEFT` for the last stage, else
        all of them (a finisher is then not scored again)."""
        if self.early_batches is None or self.early_batches > batches - MIN_BATCHES_LEFT:
            return batches
        return self.early_batches

    def loses(self, candidate: torch.Tensor, incumbent: torch.Tensor, total: int) -> bool:
        """Whether a candidate whose hits on the first ``n`` images are ``candidate`` cannot, at this confidence,
        end above an incumbent with hits ``incumbent`` on the same images, over ``total`` images."""
        n = len(candidate)
        if n == 0:
            return False
        d = candidate.float() - incumbent[:n].float()
        m = d.mean().item()
        s = d.std(unbiased=True).item() if n > 1 else 1.0
        z = NormalDist().inv_cdf(self.confidence)
        return total * m + z * s * math.sqrt(total * (total - n) / n) < 0
