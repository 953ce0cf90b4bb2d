"""Datasets by name: CIFAR-10 (torchvision batches or an ImageFolder copy), any ImageFolder tree, digits.

Split names: ``train``, ``test`` and ``val`` where a dataset has them, plus ``<split>-search`` and
``<split>-report``: two fixed, disjoint halves of a split (a seeded permutation), so that a search
proxy and the reported accuracy never share an image. ``load_split(..., images=N)`` takes a fixed seeded
subset of a split or half, and ``input_size`` resizes and centre-crops; an ``imagefolder:PATH`` decodes
only the images chosen (``autoprune/zoo/folder.py``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import torch

from autoprune.errors import ConfigError, DataError
from autoprune.io import atomic_write
from autoprune.zoo.digits import DIGITS_SPLITS, load_digits_split
from autoprune.zoo.folder import (
    folder_classes,
    folder_image_size,
    folder_splits,
    load_folder_split,
    pick,
    resize_crop,
    split_name,
)
from autoprune.zoo.images import ImageSet, cache_dir

CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
DATASETS = ("digits", "cifar10", "imagefolder:PATH")
HALVES = ("search", "report")
__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "DATASETS", "HALVES", "data_dir_from_env", "folder_classes",
           "folder_image_size", "folder_splits", "load_split"]


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
    *,
    images: int | None = None,
    input_size: int | None = None,
    resize_size: int | None = None,
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
        images: use only this many images of the split (or half): a fixed seeded subset, the same every
            time; an ``imagefolder`` decodes only those. None: all.
        input_size: resize (shorter side to ``resize_size``) and centre-crop every image to ``input_size`` x
            ``input_size``, as torchvision's evaluation transforms. None: images must share one size.
        resize_size: the shorter side before the crop (default ``input_size``).

    Raises:
        ConfigError: for an unknown dataset or split.
        DataError: when the data cannot be found or read.
    """
    _check_sizes(images, input_size, resize_size)
    base, half = split_name(split)
    if dataset.startswith("imagefolder:"):
        root = Path(dataset.removeprefix("imagefolder:")).expanduser()
        return load_folder_split(root, split, mean, std, images=images, input_size=input_size, resize_size=resize_size)
    if dataset == "digits":
        if base not in DIGITS_SPLITS:
            raise ConfigError(f"digits has splits {DIGITS_SPLITS} (plus -search/-report halves), got {split!r}")
        full = load_digits_split(base)
    elif dataset == "cifar10":
        full = _load_cifar10(base, data_dir_from_env(data_dir), download, mean, std)
    else:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    idx = pick(len(full), half, images)
    chosen = full if idx is None else full.subset(idx)
    if input_size is None:
        return chosen
    return replace(chosen, images=resize_crop(chosen.images, input_size, resize_size))


def _check_sizes(images: int | None, input_size: int | None, resize_size: int | None) -> None:
    for name, value in (("images", images), ("input size", input_size), ("resize size", resize_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    if resize_size is not None and (input_size is None or resize_size < input_size):
        raise ConfigError(f"resize size {resize_size} needs an input size of at most {resize_size}, "
                          f"got {input_size}: pass --input-size too, no larger than the resize size")


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
    """Decode CIFAR-10's ImageFolder copy (``root/<class>/<image>``), the whole split, with a disk cache."""
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
