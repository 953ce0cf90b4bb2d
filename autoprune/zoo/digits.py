"""The offline embedded default: a small CNN on scikit-learn's bundled 8x8 digits.

The network is trained at first use (seconds on a CPU, fixed seed, one thread) and cached, so a fresh
machine with no internet can run a real search, and every machine trains the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.console import status
from autoprune.core.threads import torch_threads
from autoprune.io import atomic_write
from autoprune.zoo.images import ImageSet, cache_dir

DIGITS_SPLITS = ("train", "val", "test")
_TRAIN_RECIPE = "digits-cnn-v2-adam-lr3e-3-e40-b64-seed0-1thread"


class DigitsCNN(nn.Module):
    """Five 3x3 conv-BN-ReLU layers, one 2x2 max-pool, global average pool and a linear classifier."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 32, 64, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i == 1:
                layers.append(nn.MaxPool2d(2))
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(F.avg_pool2d(x, x.shape[-1]).flatten(1))


def load_digits_split(split: str) -> ImageSet:
    """One fixed split (train 60%, val 20%, test 20%) of scikit-learn's 1,797 digits.

    Raises:
        ValueError: for an unknown split name.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits split must be one of {DIGITS_SPLITS}, got {split!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.uint8).unsqueeze(1)  # values 0..16
    labels = torch.from_numpy(bunch.target).long()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_train, n_val = int(0.6 * len(perm)), int(0.2 * len(perm))
    parts = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
    train = images[parts["train"]].float() / 16.0
    idx = parts[split]
    return ImageSet(images[idx], labels[idx], mean=(train.mean().item(),), std=(train.std().item(),), scale=16.0)


def pretrained_digits_cnn() -> DigitsCNN:
    """The digits CNN trained on the train split; trained once (fixed seed) and cached on disk."""
    path = cache_dir() / "weights" / f"{_TRAIN_RECIPE}.pt"
    if path.is_file():
        model = DigitsCNN()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    status(f"training the digits demo network once (10-20 s on one CPU thread; cached in {path.parent})")
    # a fixed seed without touching the caller's random state, and one thread: reductions split over another
    # number of threads sum in another order, so the weights (and every demo result) would depend on the machine
    with torch.random.fork_rng(), torch_threads(1):
        torch.manual_seed(0)
        model = _train(load_digits_split("train"))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    return model


def _train(train: ImageSet) -> DigitsCNN:
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        for idx in torch.randperm(len(train), generator=generator).split(64):
            x, y = train.batch(idx)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()
