"""Checkpoints: the shared CIFAR weights, prefixes, weights_only, corrupt and mismatched files."""

import urllib.error

import pytest
import torch

from autoprune.errors import WeightsError
from autoprune.zoo.models import build_model
from autoprune.zoo.weights import load_weights, read_state_dict
from tests.conftest import CIFAR_CHECKPOINTS, WEIGHTS_DIR, needs_weights


class Note:
    """An arbitrary pickled object: loading it needs weights_only=False."""


@needs_weights
@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_shared_checkpoints_load_by_name_from_weights_dir(name):
    model = build_model(name)
    source = load_weights(model, name, CIFAR_CHECKPOINTS[name], WEIGHTS_DIR)
    assert source.endswith(CIFAR_CHECKPOINTS[name])
    raw = torch.load(WEIGHTS_DIR / CIFAR_CHECKPOINTS[name], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.conv1.weight, raw["module.conv1.weight"])


def test_prefix_and_wrapping_are_handled(tmp_path):
    model = build_model("resnet20")
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    assert read_state_dict(tmp_path / "w.pt").keys() == model.state_dict().keys()


def test_mismatched_corrupt_and_unsafe_checkpoints(tmp_path):
    torch.save(build_model("resnet20").state_dict(), tmp_path / "r20.pt")
    with pytest.raises(WeightsError, match="does not fit model resnet32"):
        load_weights(build_model("resnet32"), "resnet32", str(tmp_path / "r20.pt"))
    (tmp_path / "bad.th").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(build_model("resnet20"), "resnet20", str(tmp_path / "bad.th"))
    torch.save({"state_dict": build_model("resnet20").state_dict(), "note": Note()}, tmp_path / "unsafe.th")
    with pytest.raises(WeightsError, match="--trust-checkpoint"):
        read_state_dict(tmp_path / "unsafe.th")
    assert read_state_dict(tmp_path / "unsafe.th", trust=True).keys() == build_model("resnet20").state_dict().keys()
    with pytest.raises(WeightsError, match="not found"):
        load_weights(build_model("resnet20"), "resnet20", "nope.th")


def test_torchvision_weights_name_downloads_or_explains(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="cannot download torchvision weights IMAGENET1K_V1"):
        load_weights(build_model("torchvision:resnet18", 1000), "torchvision:resnet18", "IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="no torchvision weights named"):
        load_weights(build_model("torchvision:resnet18", 1000), "torchvision:resnet18", "IMAGENET9K")
