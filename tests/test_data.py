"""Datasets: ImageFolder decoding and its cache, fixed disjoint halves, digits splits, CIFAR-10 lookup."""

import pytest
import torch
from PIL import Image

from autoprune.core.threads import torch_threads
from autoprune.errors import ConfigError, DataError
from autoprune.zoo import datasets
from autoprune.zoo.datasets import load_split
from autoprune.zoo.digits import load_digits_split, pretrained_digits_cnn


@pytest.fixture
def tiny_cifar(tmp_path):
    """A CIFAR-10-shaped ImageFolder copy: 2 classes x 5 images per split."""
    root = tmp_path / "data" / "cifar10-jpeg"
    for split in ("train", "test"):
        for label, cls in enumerate(("airplane", "automobile")):
            (root / split / cls).mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (32, 32), (10 * i, 100 * label, 7)).save(root / split / cls / f"{i:04d}.png")
    return tmp_path / "data"


def test_imagefolder_decodes_labels_pixels_and_caches(tiny_cifar, monkeypatch):
    data = load_split("cifar10", "test", tiny_cifar)
    assert data.images.shape == (10, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0] * 5 + [1] * 5
    assert data.images[6, :, 0, 0].tolist() == [10, 100, 7]
    x, y = data.batch(slice(0, 2))
    expected = (torch.tensor([0.0, 0.0, 7 / 255]) - torch.tensor(datasets.CIFAR10_MEAN)) / torch.tensor(datasets.CIFAR10_STD)
    assert torch.allclose(x[0, :, 0, 0], expected)
    monkeypatch.setattr(datasets, "_decode", lambda path: pytest.fail("decoded again instead of using the cache"))
    assert torch.equal(load_split("cifar10", "test", tiny_cifar).images, data.images)


def test_halves_are_fixed_disjoint_and_cover_the_split(tiny_cifar):
    full = load_split("cifar10", "test", tiny_cifar)
    search = load_split("cifar10", "test-search", tiny_cifar)
    report = load_split("cifar10", "test-report", tiny_cifar)
    assert len(search) == len(report) == 5
    as_rows = lambda d: {tuple(img.flatten().tolist()) for img in d.images}  # noqa: E731
    assert as_rows(search).isdisjoint(as_rows(report))
    assert as_rows(search) | as_rows(report) == as_rows(full)
    assert torch.equal(load_split("cifar10", "test-search", tiny_cifar).images, search.images)


def test_digits_splits_are_disjoint():
    parts = {s: load_digits_split(s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 1797
    rows = {s: {tuple(i.flatten().tolist()) + (int(l),) for i, l in zip(p.images, p.labels)} for s, p in parts.items()}
    assert len(rows["val"] & rows["test"]) <= 2  # the digits set holds a few exact duplicates


def test_digits_cnn_trains_the_same_weights_whatever_the_callers_threads(tmp_path, monkeypatch):
    cached = pretrained_digits_cnn().state_dict()  # the session's, trained by whichever test came first
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path))
    with torch_threads(2):
        fresh = pretrained_digits_cnn().state_dict()  # trained now, in a new cache
        assert torch.get_num_threads() == 2
    assert list(tmp_path.rglob("*.pt")) and fresh.keys() == cached.keys()
    assert all(torch.equal(fresh[k], cached[k]) for k in cached)


def test_missing_cifar_says_where_to_point(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="AUTOPRUNE_DATA_DIR or --data-dir"):
        load_split("cifar10", "test", tmp_path)
    with pytest.raises(ConfigError, match="splits train and test"):
        load_split("cifar10", "validation", tmp_path)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_split("imagenet", "val", tmp_path)


def test_download_uses_torchvision_cifar10(tmp_path, monkeypatch):
    calls = {}

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.update(root=root, train=train, download=download)
            self.data = torch.zeros(4, 32, 32, 3, dtype=torch.uint8).numpy()
            self.targets = [0, 1, 2, 3]

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = load_split("cifar10", "train", tmp_path, download=True)
    assert calls == {"root": str(tmp_path), "train": True, "download": True}
    assert data.images.shape == (4, 3, 32, 32)
