"""Decoded image sets held in memory as uint8 tensors, and the on-disk cache folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


def cache_dir() -> Path:
    """Where decoded data and trained demo weights are cached (``AUTOPRUNE_CACHE_DIR`` overrides)."""
    root = os.environ.get("AUTOPRUNE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "autoprune"
    )
    return Path(root)


@dataclass(frozen=True)
class ImageSet:
    """Images as a uint8 ``(N, C, H, W)`` tensor with labels and the normalisation the network expects.

    Attributes:
        images: raw pixel values, ``0 .. scale``.
        labels: class indices.
        mean: per-channel mean of ``images / scale``.
        std: per-channel std of ``images / scale``.
        scale: the value of a full-intensity pixel (255 for 8-bit images).
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor | slice, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised float images and labels at ``idx``."""
        x = self.images[idx].to(device, torch.float32).div_(self.scale)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return (x - mean) / std, self.labels[idx].to(device)

    def subset(self, idx: torch.Tensor) -> ImageSet:
        """The images at ``idx`` as a new set with the same normalisation."""
        return ImageSet(self.images[idx], self.labels[idx], self.mean, self.std, self.scale)
