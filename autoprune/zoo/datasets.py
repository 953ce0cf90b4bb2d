"""Datasets by name: CIFAR-10 (torchvision batches or an ImageFolder copy), any ImageFolder tree, digits.

Split names: ``train``, ``test`` and ``val`` where a dataset has them, plus ``<split>-search`` and
``<split>-report``: two fixed, disjoint halves of a split (a seeded permutation), so that a search
proxy and the reported accuracy never share an image.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from autoprune.errors import ConfigError, DataError
from autoprune.io import atomic_write
from autoprune.zoo.digits import DIGITS_SPLITS, load_digits_split
from autoprune.zoo.images import ImageSet, cache_dir

CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
DATASETS = ("digits", "cifar10", "imagefolder:PATH")
HALVES = ("search", "report")
_SPLIT_SEED = 0


def data_dir_from_env(data_dir: str | Path | None) -> Path | None:
    """The data folder: the explicit argument, else ``AUTOPRUNE_DATA_DIR``, else None."""
    chosen = data_dir if data_dir is not None else os.environ.get("AUTOPRUNE_DATA_DIR")
    return Path(chosen).expanduser() if chosen else None


def load_split(
    dataset: str,
    split: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> ImageSet:
    """Load one split of a dataset as decoded tensors (cached on disk after the first decode).

    Args:
        dataset: ``digits``, ``cifar10`` or ``imagefolder:PATH``.
        split: a split name, optionally with a ``-search`` or ``-report`` half suffix.
        data_dir: folder holding ``cifar10-jpeg/`` or ``cifar-10-batches-py/`` (default:
            ``AUTOPRUNE_DATA_DIR``).
        download: download CIFAR-10 with torchvision when it is not found.
        mean: normalisation mean for image datasets.
        std: normalisation std for image datasets.

    Raises:
        ConfigError: for an unknown dataset or split.
        DataError: when the data cannot be found or read.
    """
    base, _, half = split.rpartition("-") if split.endswith(tuple(f"-{h}" for h in HALVES)) else (split, "", "")
    if dataset == "digits":
        if base not in DIGITS_SPLITS:
            raise ConfigError(f"digits has splits {DIGITS_SPLITS} (plus -search/-report halves), got {split!r}")
        full = load_digits_split(base)
    elif dataset == "cifar10":
        full = _load_cifar10(base, data_dir_from_env(data_dir), download, mean, std)
    elif dataset.startswith("imagefolder:"):
        root = Path(dataset.removeprefix("imagefolder:")).expanduser()
        full = _load_imagefolder(root / base, mean, std)
    else:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return _half(full, half) if half else full


def _half(full: ImageSet, half: str) -> ImageSet:
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    mid = len(full) // 2
    return full.subset(perm[:mid] if half == "search" else perm[mid:])


def _load_cifar10(
    split: str, data_dir: Path | None, download: bool, mean: tuple[float, ...], std: tuple[float, ...]
) -> ImageSet:
    if split not in ("train", "test"):
        raise ConfigError(f"cifar10 has splits train and test (plus -search/-report halves), got {split!r}")
    if data_dir is not None:
        for folder in (data_dir / "cifar10-jpeg", data_dir):
            if (folder / split).is_dir():
                return _load_imagefolder(folder / split, mean, std)
        if (data_dir / "cifar-10-batches-py").is_dir() or download:
            return _load_cifar10_batches(split, data_dir, download, mean, std)
    elif download:
        return _load_cifar10_batches(split, cache_dir() / "data", download, mean, std)
    where = f"under {str(data_dir)!r}" if data_dir else "(no data folder given)"
    raise DataError(
        f"CIFAR-10 not found {where}: set AUTOPRUNE_DATA_DIR or --data-dir to a folder holding "
        f"cifar10-jpeg/ or cifar-10-batches-py/, or pass --download when online"
    )


def _load_cifar10_batches(
    split: str, root: Path, download: bool, mean: tuple[float, ...], std: tuple[float, ...]
) -> ImageSet:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=split == "train", download=download)
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot load CIFAR-10 from {str(root)!r}: {e}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.long), mean, std)


def _load_imagefolder(root: Path, mean: tuple[float, ...], std: tuple[float, ...]) -> ImageSet:
    """Decode an ImageFolder tree (``root/<class>/<image>``) of equally sized images, with a disk cache."""
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot read image folder {str(root)!r}: {e}") from None
    stamp = f"{root.resolve()}|{len(folder.samples)}|{root.stat().st_mtime_ns}|{folder.classes}"
    cached = cache_dir() / "data" / f"imagefolder-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.pt"
    if cached.is_file():
        blob = torch.load(cached, map_location="cpu", weights_only=True)
        return ImageSet(blob["images"], blob["labels"], mean, std)
    images = torch.stack([_decode(Path(path)) for path, _ in folder.samples])
    labels = torch.tensor([label for _, label in folder.samples], dtype=torch.long)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, lambda tmp: torch.save({"images": images, "labels": labels}, tmp))
    return ImageSet(images, labels, mean, std)


def _decode(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise DataError(f"cannot decode image {str(path)!r}: {e}") from None
