"""Your own images: an ImageFolder tree decoded on demand (subsets, halves, resize + crop, cache, bad layouts)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune.errors import ConfigError, DataError
from autoprune.zoo import folder
from autoprune.zoo.datasets import folder_classes, folder_image_size, folder_splits, load_split

CLASSES = ("cat", "dog", "fox")


def _noise(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    """A PNG of random pixels, ``size`` = (width, height)."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)


def _tree(root: Path, sizes: tuple[tuple[int, int], ...] = ((40, 40),), per_class: dict[str, int] | None = None,
          classes: dict[str, tuple[str, ...]] | None = None) -> str:
    """``root/{train,val}/<class>/<i>.png`` of random noise, image ``i`` of size ``sizes[i % len(sizes)]``."""
    per_class = per_class or {"train": 6, "val": 4}
    classes = classes or {}
    seed = 0
    for split, n in per_class.items():
        for name in classes.get(split, CLASSES):
            for i in range(n):
                seed += 1
                _noise(root / split / name / f"{i:03d}.png", sizes[i % len(sizes)], seed)
    return f"imagefolder:{root}"


def _rows(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_whole_split_keeps_imagefolder_order_and_labels(tmp_path, cache):
    from torchvision.datasets import ImageFolder

    data = load_split(_tree(tmp_path / "d"), "train")
    assert data.images.shape == (18, 3, 40, 40) and data.images.dtype == torch.uint8
    reference = ImageFolder(str(tmp_path / "d" / "train"))
    assert data.labels.tolist() == reference.targets
    first = torch.from_numpy(np.array(Image.open(reference.samples[7][0]))).permute(2, 0, 1)
    assert torch.equal(data.images[7], first)


def test_subsets_are_fixed_and_halves_disjoint(tmp_path, cache):
    ds = _tree(tmp_path / "d")
    sub = load_split(ds, "train", images=5)
    assert len(sub) == 5 and torch.equal(load_split(ds, "train", images=5).images, sub.images)
    assert _rows(sub.images) <= _rows(load_split(ds, "train").images)
    assert len(load_split(ds, "train", images=100)) == 18  # more than there are: all of them
    search, report = load_split(ds, "val-search"), load_split(ds, "val-report")
    assert len(search) == len(report) == 6
    assert _rows(search.images).isdisjoint(_rows(report.images))
    assert _rows(search.images) | _rows(report.images) == _rows(load_split(ds, "val").images)
    small = load_split(ds, "val-search", images=4)
    assert len(small) == 4 and _rows(small.images) <= _rows(search.images)
    assert torch.equal(small.images, search.images[:4])  # the first of the half's seeded order


def test_only_the_chosen_images_are_decoded_then_cached(tmp_path, cache, monkeypatch):
    ds = _tree(tmp_path / "d")
    decode, calls = folder._decode_image, []
    monkeypatch.setattr(folder, "_decode_image", lambda path: calls.append(path) or decode(path))
    first = load_split(ds, "train", images=3)
    assert len(calls) == 3 and len(set(calls)) == 3
    assert torch.equal(load_split(ds, "train", images=3).images, first.images) and len(calls) == 3  # cached
    load_split(ds, "val-report", images=2)
    assert len(calls) == 5
    assert list(cache.glob("data/folder-*.pt"))


def test_a_changed_file_is_decoded_again(tmp_path, cache):
    ds = _tree(tmp_path / "d")
    before = load_split(ds, "val")
    path = tmp_path / "d" / "val" / "cat" / "000.png"
    _noise(path, (40, 40), seed=999)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = load_split(ds, "val")
    assert not torch.equal(after.images[0], before.images[0]) and torch.equal(after.images[1:], before.images[1:])


def test_resize_and_centre_crop_like_torchvision(tmp_path, cache):
    from torchvision.transforms.v2 import functional as F

    ds = _tree(tmp_path / "d", sizes=((40, 40), (48, 36)))
    data = load_split(ds, "train", input_size=32)
    assert data.images.shape == (18, 3, 32, 32) and data.images.dtype == torch.uint8
    assert load_split(ds, "train", images=4, input_size=24, resize_size=28).images.shape == (4, 3, 24, 24)
    wide = torch.from_numpy(np.array(Image.open(tmp_path / "d" / "train" / "cat" / "001.png"))).permute(2, 0, 1)
    assert wide.shape == (3, 36, 48)
    expected = F.center_crop(F.resize(wide, [32], antialias=True), [32, 32])
    assert torch.equal(data.images[1], expected)


def test_images_of_different_sizes_need_input_size(tmp_path, cache):
    ds = _tree(tmp_path / "d", sizes=((40, 40), (48, 36)))
    with pytest.raises(DataError, match=r"differ in size \(.*40x40.*48x36.*--input-size") as e:
        load_split(ds, "train")
    assert "\n" not in str(e.value)


def test_digits_and_cifar_style_sets_take_subsets_and_sizes_too():
    val = load_split("digits", "val-search")
    sub = load_split("digits", "val-search", images=10, input_size=16)
    assert sub.images.shape == (10, 1, 16, 16) and torch.equal(sub.labels, val.labels[:10])
    assert torch.equal(load_split("digits", "val-search", images=10).images, val.images[:10])
    with pytest.raises(ConfigError, match="images must be a positive"):
        load_split("digits", "val", images=0)
    with pytest.raises(ConfigError, match="--input-size"):
        load_split("digits", "val", resize_size=20)


def test_corrupt_grey_and_alpha_images(tmp_path, cache):
    ds = _tree(tmp_path / "d")
    (tmp_path / "d" / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "d" / "train" / "cat" / "notes.txt").write_text("not an image, not counted")
    _noise(tmp_path / "d" / "train" / "fox" / "grey.png", (40, 40), seed=5, mode="L")
    _noise(tmp_path / "d" / "train" / "fox" / "alpha.png", (40, 40), seed=6, mode="RGBA")
    for _ in range(2):  # decoded, then from the cache: the same single warning
        with pytest.warns(UserWarning, match=r"skipped 1 unreadable image .*'broken.png'") as caught:
            data = load_split(ds, "train")
        assert len([w for w in caught if "unreadable" in str(w.message)]) == 1
        assert data.images.shape == (18 + 2, 3, 40, 40)
    grey = np.array(Image.open(tmp_path / "d" / "train" / "fox" / "grey.png"))
    fox = data.images[data.labels == 2]
    assert any(torch.equal(img, torch.from_numpy(grey).expand(3, 40, 40)) for img in fox)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_split(ds, "val")  # nothing skipped: no warning


def test_a_class_with_no_readable_image_is_an_error(tmp_path, cache):
    ds = _tree(tmp_path / "d")
    (tmp_path / "d" / "val" / "emu").mkdir()
    (tmp_path / "d" / "train" / "emu").mkdir()
    with pytest.raises(DataError, match=r"class folder .*emu' holds no image") as e:
        load_split(ds, "val")
    assert "\n" not in str(e.value)
    (tmp_path / "d" / "val" / "emu" / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "d" / "train" / "emu" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"none of the chosen images of class folder .*emu' can be read"):
        load_split(ds, "val")


def test_images_directly_in_the_split_folder_are_an_error(tmp_path, cache):
    _noise(tmp_path / "d" / "train" / "a.png", (40, 40), seed=1)
    with pytest.raises(DataError, match=r"holds images but no class subfolders.*<class>") as e:
        load_split(f"imagefolder:{tmp_path / 'd'}", "train")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_split(f"imagefolder:{tmp_path / 'd'}", "val")


def test_splits_must_have_the_same_classes(tmp_path, cache):
    ds = _tree(tmp_path / "d", classes={"val": ("cat", "dog")})
    with pytest.raises(DataError, match=r"different classes \(only in train/: fox; only in val/: -\)") as e:
        load_split(ds, "val")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="different classes"):
        folder_classes(tmp_path / "d")


def test_folder_helpers(tmp_path):
    _tree(tmp_path / "d", sizes=((48, 36),))
    assert folder_classes(tmp_path / "d") == list(CLASSES)
    assert folder_splits(tmp_path / "d") == {"calibration": "train", "proxy": "val-search", "report": "val-report"}
    assert folder_image_size(tmp_path / "d", "train") == (36, 48)
    assert folder_image_size(tmp_path / "d", "val-report", sample=2) == (36, 48)
    _tree(tmp_path / "m", sizes=((40, 40), (48, 36)), per_class={"train": 2, "test": 2})
    assert folder_image_size(tmp_path / "m", "train") is None
    assert folder_splits(tmp_path / "m") == {"calibration": "train", "proxy": "test-search", "report": "test-report"}
    _tree(tmp_path / "t", per_class={"train": 1})
    with pytest.raises(DataError, match=r"has no val/ \(or test/\)"):
        folder_splits(tmp_path / "t")
