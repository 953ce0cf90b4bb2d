"""Training-time augmentation on batches of image tensors: random crop with padding and horizontal flip.

It runs on normalised batches, so the padding (zeros) has the dataset's mean colour. Every random draw
comes from the generator the caller passes, so an epoch's augmentation is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding by ``pad`` pixels, then a horizontal flip with probability 1/2.

    Attributes:
        pad: padding on every side before the random crop back to the input size (0: no crop).
        flip: whether to flip images horizontally at random.
    """

    pad: int = 0
    flip: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copies of a ``(N, C, H, W)`` batch; random draws come from ``generator`` (a CPU generator)."""
        n, _, h, w = images.shape
        if self.pad > 0:
            padded = F.pad(images, (self.pad,) * 4)
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator).to(images.device)
            rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (N, H)
            cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # (N, W)
            batch = torch.arange(n, device=images.device).view(n, 1, 1)
            images = padded[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)  # (N, C, H, W)
        if self.flip:
            flipped = (torch.rand(n, generator=generator) < 0.5).to(images.device)
            images = torch.where(flipped.view(n, 1, 1, 1), images.flip(3), images)
        return images.contiguous()


def augmentation_for(dataset: str, input_shape: list[int] | tuple[int, ...]) -> Augmentation:
    """The standard augmentation for a dataset.

    CIFAR-10: 4-pixel padding and random crop, horizontal flip. Digits: 1-pixel shift, no flip (a
    mirrored digit is another symbol or none). Other image folders: padding of 1/8 of the height, flip.

    Args:
        dataset: dataset name of the env preset (``cifar10``, ``digits``, ``imagefolder:PATH``).
        input_shape: the network's input shape, batch dimension included.
    """
    if dataset == "cifar10":
        return Augmentation(pad=4, flip=True)
    if dataset == "digits":
        return Augmentation(pad=1, flip=False)
    return Augmentation(pad=max(1, input_shape[-2] // 8), flip=True)
