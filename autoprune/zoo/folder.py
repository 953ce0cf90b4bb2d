"""Your own images: an ImageFolder tree (``root/<split>/<class>/<image>``) decoded on demand.

Only the images a run uses are decoded: the files are listed (cheap), a fixed seeded subset is chosen
(:func:`pick`), and just those are decoded, in parallel, optionally resized and centre-cropped, then
cached on disk as uint8 tensors under ``cache_dir()/data/``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from autoprune.console import plural
from autoprune.errors import DataError
from autoprune.io import atomic_write
from autoprune.zoo.images import ImageSet, cache_dir

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The file endings read as images (torchvision's ImageFolder's, any case)."""

SPLIT_FOLDERS = ("train", "val", "test")
SPLIT_SEED = 0
"""Seed of the permutation that chooses the halves and the subsets of a split."""

_Sample = tuple[str, int]


def pick(n: int, half: str = "", images: int | None = None) -> torch.Tensor | None:
    """The indices of a split's images to use, or None for all of them in their order.

    Args:
        n: the number of images in the split.
        half: ``""`` (the whole split), ``"search"`` or ``"report"`` (the first or second half of a
            seeded permutation).
        images: use only the first this many of the (half's) seeded permutation.
    """
    if not half and (images is None or images >= n):
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    if half:
        perm = perm[: n // 2] if half == "search" else perm[n // 2 :]
    return perm if images is None else perm[:images]


def resize_crop(images: torch.Tensor, input_size: int, resize_size: int | None = None) -> torch.Tensor:
    """Resize (shorter side to ``resize_size``, default ``input_size``) and centre-crop to a square.

    Works on one ``(C, H, W)`` image or a ``(N, C, H, W)`` batch, as torchvision's evaluation transforms.
    """
    from torchvision.transforms.v2 import functional as F

    images = F.resize(images, [resize_size or input_size], antialias=True)
    return F.center_crop(images, [input_size, input_size])


def _layout(root: Path) -> str:
    return f"expected {str(root)!r}/<train|val|test>/<class>/<image> (one subfolder per class)"


def _class_names(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _split_classes(root: Path, split: str) -> list[str]:
    """The sorted class folders of ``root/split``; a DataError when the folder or its classes are missing."""
    folder = root / split
    if not folder.is_dir():
        present = [s for s in SPLIT_FOLDERS if (root / s).is_dir()]
        found = f"it has {', '.join(p + '/' for p in present)}" if present else "no split folder was found"
        raise DataError(f"image folder {str(folder)!r} does not exist ({found}): {_layout(root)}")
    classes = _class_names(folder)
    if not classes:
        loose = any(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in os.scandir(folder))
        what = "holds images but no class subfolders" if loose else "has no class subfolders"
        raise DataError(f"{str(folder)!r} {what}: put each class's images in {str(folder)!r}/<class>/; {_layout(root)}")
    return classes


def _check_same_classes(root: Path, split: str, classes: list[str]) -> None:
    for other in SPLIT_FOLDERS:
        if other == split or not (root / other).is_dir():
            continue
        theirs = _split_classes(root, other)
        if theirs != classes:
            pair = [(split, classes), (other, theirs)]
            pair.sort(key=lambda p: SPLIT_FOLDERS.index(p[0]) if p[0] in SPLIT_FOLDERS else -1)
            (a, mine), (b, yours) = pair
            only = [f"only in {name}/: {', '.join(sorted(set(x) - set(y))[:5]) or '-'}"
                    for name, x, y in ((a, mine, yours), (b, yours, mine))]
            raise DataError(f"{a}/ and {b}/ under {str(root)!r} have different classes ({'; '.join(only)}): "
                            f"give every split the same class folders")


def folder_classes(root: str | Path) -> list[str]:
    """The sorted class names of ``root/train`` (or the first of val/test), checked to match the other splits.

    Raises:
        DataError: when no split folder has class subfolders, or the splits' classes differ.
    """
    root = Path(root).expanduser()
    first = next((s for s in SPLIT_FOLDERS if (root / s).is_dir()), "train")
    classes = _split_classes(root, first)
    _check_same_classes(root, first, classes)
    return classes


def folder_splits(root: str | Path) -> dict[str, str]:
    """The split of each role: calibration on ``train``, proxy and report on the two halves of val (else test).

    Raises:
        DataError: when ``root`` lacks ``train/`` or both ``val/`` and ``test/``.
    """
    root = Path(root).expanduser()
    held_out = next((s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or held_out is None:
        missing = "train/" if not (root / "train").is_dir() else "val/ (or test/)"
        raise DataError(f"image folder {str(root)!r} has no {missing}: {_layout(root)}")
    return {"calibration": "train", "proxy": f"{held_out}-search", "report": f"{held_out}-report"}


def list_split(root: Path, split: str) -> tuple[list[str], list[_Sample]]:
    """The classes and the ``(path, class index)`` of every image file of ``root/split``, in ImageFolder's order.

    Raises:
        DataError: for a missing split, a split without class folders, a class folder without images, or
            classes that differ from the other splits'.
    """
    classes = _split_classes(root, split)
    _check_same_classes(root, split, classes)
    samples: list[_Sample] = []
    for label, name in enumerate(classes):
        found = [os.path.join(path, f)
                 for path, _, files in sorted(os.walk(root / split / name, followlinks=True))
                 for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
        if not found:
            raise DataError(f"class folder {str(root / split / name)!r} holds no image ({', '.join(IMG_EXTENSIONS)}): "
                            f"add its images or remove the folder; {_layout(root)}")
        samples.extend((path, label) for path in found)
    return classes, samples


def folder_image_size(root: str | Path, split: str, sample: int = 64) -> tuple[int, int] | None:
    """The ``(height, width)`` shared by a seeded sample of a split's images (read from headers), else None.

    Args:
        root: the image folder.
        split: a split name, optionally with a ``-search``/``-report`` half suffix.
        sample: how many images to look at.
    """
    from PIL import Image

    base, half = split_name(split)
    _, samples = list_split(Path(root).expanduser(), base)
    idx = pick(len(samples), half, sample)
    sizes = set()
    for i in range(len(samples)) if idx is None else idx.tolist():
        try:
            with Image.open(samples[i][0]) as im:
                sizes.add(im.size[::-1])
        except (OSError, ValueError, SyntaxError):
            continue
    return sizes.pop() if len(sizes) == 1 else None


def split_name(split: str) -> tuple[str, str]:
    """``"test-search"`` -> ``("test", "search")``; a split without a half suffix -> ``(split, "")``."""
    base, _, half = split.rpartition("-")
    return (base, half) if base and half in ("search", "report") else (split, "")


def load_folder_split(
    root: Path,
    split: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    images: int | None = None,
    input_size: int | None = None,
    resize_size: int | None = None,
) -> ImageSet:
    """Decode the chosen images of one split of an ImageFolder tree, with a disk cache.

    Args:
        root: the image folder, holding ``train/`` and ``val/`` or ``test/``.
        split: a split name, optionally with a ``-search``/``-report`` half suffix.
        mean: normalisation mean.
        std: normalisation std.
        images: use only this many images (a fixed seeded subset, see :func:`pick`).
        input_size: resize and centre-crop every image to ``input_size`` x ``input_size``.
        resize_size: the shorter side before the crop (default ``input_size``).

    Raises:
        DataError: for a tree that does not have the ImageFolder layout, a class none of whose chosen images
            can be read, or images of different sizes without ``input_size``.
    """
    base, half = split_name(split)
    classes, samples = list_split(root, base)
    idx = pick(len(samples), half, images)
    chosen = samples if idx is None else [samples[i] for i in idx.tolist()]
    cached = cache_dir() / "data" / f"folder-{_cache_key(root, split, classes, chosen, input_size, resize_size)}.pt"
    if cached.is_file():
        blob = torch.load(cached, map_location="cpu", weights_only=True)
        _warn_skipped(root / base, blob["skipped"])
        return ImageSet(blob["images"], blob["labels"], mean, std)
    decoded = _decode_all([path for path, _ in chosen], input_size, resize_size)
    kept = [(img, label) for img, (_, label) in zip(decoded, chosen) if img is not None]
    skipped = [path for img, (path, _) in zip(decoded, chosen) if img is None]
    readable = {label for _, label in kept}
    unreadable = sorted({label for _, label in chosen} - readable)
    if unreadable:
        name = classes[unreadable[0]]
        raise DataError(f"none of the chosen images of class folder {str(root / base / name)!r} can be read: "
                        f"put readable images in it; {_layout(root)}")
    sizes = list(dict.fromkeys(tuple(img.shape[1:]) for img, _ in kept))
    if len(sizes) > 1:
        (h1, w1), (h2, w2) = sizes[:2]
        raise DataError(f"images in {str(root / base)!r} differ in size ({w1}x{h1} and {w2}x{h2} pixels): "
                        f"pass --input-size to resize and centre-crop them to one size")
    stacked = torch.stack([img for img, _ in kept])
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, lambda tmp: torch.save({"images": stacked, "labels": labels, "skipped": skipped}, tmp))
    _warn_skipped(root / base, skipped)
    return ImageSet(stacked, labels, mean, std)


def _cache_key(root: Path, split: str, classes: list[str], chosen: Sequence[_Sample], input_size: int | None,
               resize_size: int | None) -> str:
    digest = hashlib.sha1(f"{root.resolve()}|{split}|{classes}|{input_size}|{resize_size}".encode())
    for path, label in chosen:
        st = os.stat(path)
        digest.update(f"|{os.path.relpath(path, root)}|{label}|{st.st_mtime_ns}|{st.st_size}".encode())
    return digest.hexdigest()[:20]


def _warn_skipped(folder: Path, skipped: list[str]) -> None:
    if skipped:
        warnings.warn(f"skipped {plural(len(skipped), 'unreadable image')} in {str(folder)!r} "
                      f"(first: {os.path.basename(skipped[0])!r})", stacklevel=3)


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


def _decode_all(paths: list[str], input_size: int | None, resize_size: int | None) -> list[torch.Tensor | None]:
    """Decode (and resize) ``paths`` in parallel, in order; None for a file that cannot be read."""

    def run(part: list[str]) -> list[torch.Tensor | None]:
        out = []
        for path in part:
            img = _decode_image(path)
            out.append(resize_crop(img, input_size, resize_size) if img is not None and input_size else img)
        return out

    workers = _workers()
    if workers == 1 or len(paths) < 64:
        return run(paths)
    step = -(-len(paths) // (4 * workers))
    with ThreadPoolExecutor(workers) as pool:
        return [img for part in pool.map(run, [paths[i : i + step] for i in range(0, len(paths), step)])
                for img in part]


def _decode_image(path: str) -> torch.Tensor | None:
    """One image file as a uint8 ``(3, H, W)`` RGB tensor (grey, palette and alpha converted), else None."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
