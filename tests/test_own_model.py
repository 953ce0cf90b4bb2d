"""Your own model: file.py:CALLABLE and module:CALLABLE specs, --model-args, checkpoint wrappers, preprocessing."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError, WeightsError
from autoprune.zoo.models import build_model, is_user_model, model_preprocessing, parse_model_args, zoo_names
from autoprune.zoo.weights import load_weights

NETWORK = textwrap.dedent('''
    """A small CNN with a residual block and a depthwise-separable block."""

    import torch
    from torch import nn


    class Residual(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(out)))


    class Depthwise(nn.Module):
        def __init__(self, channels: int, out: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.pw = nn.Conv2d(channels, out, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))


    class SmallNet(nn.Module):
        def __init__(self, width: int = 8, classes: int = 10) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.res = Residual(width)
            self.dws = Depthwise(width, 2 * width)
            self.head = nn.Linear(2 * width, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.dws(self.res(self.stem(x)))
            return self.head(x.mean((2, 3)))


    def factory(width: int = 8, classes: int = 10) -> nn.Module:
        return SmallNet(width, classes)


    def broken(width: int = 8) -> nn.Module:
        raise ValueError("width must be even")


    def not_a_network() -> int:
        return 42
''')


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    """The user's model file."""
    path = tmp_path / "my_net.py"
    path.write_text(NETWORK)
    return path


def _outputs(model: nn.Module) -> torch.Size:
    with torch.no_grad():
        return model(torch.randn(2, 3, 16, 16)).shape


def test_class_and_factory_from_a_file(net_file: Path) -> None:
    path_before = list(sys.path)
    model = build_model(f"{net_file}:SmallNet", model_args={"width": 4, "classes": 3})
    assert isinstance(model, nn.Module) and not model.training
    assert model.stem[0].out_channels == 4 and _outputs(model) == (2, 3)
    made = build_model(f"{net_file}:factory", num_classes=100, model_args={"width": 6})
    assert made.stem[0].out_channels == 6 and _outputs(made) == (2, 10)  # num_classes is not passed
    assert sys.path == path_before and str(net_file.parent) not in sys.path
    assert is_user_model(f"{net_file}:SmallNet") and is_user_model("pkg.mod:Net")
    assert not is_user_model("resnet20") and not is_user_model("torchvision:resnet18")
    assert not is_user_model("timm:resnet18")


def test_module_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "ownnets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cnn.py").write_text(NETWORK)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = build_model("ownnets.cnn:SmallNet", model_args={"width": 5, "classes": 7})
    assert model.stem[0].out_channels == 5 and _outputs(model) == (2, 7)
    for name in ("ownnets.cnn", "ownnets"):
        sys.modules.pop(name, None)


def test_zoo_names_list_the_forms() -> None:
    names = zoo_names()
    assert {"resnet20", "digits-cnn", "torchvision:NAME", "timm:NAME", "file.py:CALLABLE", "module:CALLABLE"} <= set(
        names)


@pytest.mark.parametrize(
    "spec, args, phrase",
    [
        pytest.param("{dir}/missing.py:Net", {}, "missing.py' not found", id="file-not-found"),
        pytest.param("{dir}/bad_syntax.py:Net", {}, "failed to import (SyntaxError", id="syntax"),
        pytest.param("{dir}/bad_import.py:Net", {}, "failed to import (ModuleNotFoundError: No module named "
                     "'no_such_dependency_xyz'", id="import-fails"),
        pytest.param("{net}:Missing", {}, "has no callable 'Missing'; it defines Residual, Depthwise, SmallNet, factory", id="callable-missing"),
        pytest.param("{net}:broken", {}, "from your code", id="callable-raises"),
        pytest.param("{net}:broken", {}, "raised ValueError: width must be even", id="callable-raises-message"),
        pytest.param("{net}:SmallNet", {"depth": 3}, "raised TypeError", id="bad-model-args"),
        pytest.param("{net}:not_a_network", {}, "returned builtins.int, not a torch.nn.Module", id="not-a-module"),
        pytest.param("no_such_package_xyz.models:Net", {}, "module 'no_such_package_xyz.models' is not importable",
                     id="module-not-importable"),
        pytest.param("resnet20", {"width": 3}, "do not apply to zoo model resnet20", id="zoo-with-args"),
        pytest.param("torchvision:resnet18", {"weights": "x"}, "may not set weights", id="reserved-arg"),
        pytest.param("torchvision:resnet18", {"depth": 3}, "rejected --model-args", id="torchvision-bad-arg"),
    ],
)
def test_user_model_errors(net_file: Path, spec: str, args: dict, phrase: str) -> None:
    folder = net_file.parent
    (folder / "bad_syntax.py").write_text("def Net(:\n    pass\n")
    (folder / "bad_import.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError) as caught:
        build_model(spec.format(dir=folder, net=net_file), model_args=args)
    message = str(caught.value)
    assert phrase in message and "\n" not in message


def test_user_file_imports_its_siblings_only_while_loading(tmp_path: Path) -> None:
    (tmp_path / "blocks_sibling_xyz.py").write_text("from torch import nn\nWIDTH = 3\n")
    (tmp_path / "net.py").write_text(
        "from torch import nn\nimport blocks_sibling_xyz\n\n"
        "def make():\n    return nn.Conv2d(3, blocks_sibling_xyz.WIDTH, 1)\n")
    assert build_model(f"{tmp_path / 'net.py'}:make").out_channels == 3
    assert str(tmp_path) not in sys.path
    sys.modules.pop("blocks_sibling_xyz", None)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dim=256,depth=8,patch_size=4,act=gelu,bias=true",
         {"dim": 256, "depth": 8, "patch_size": 4, "act": "gelu", "bias": True}),
        ("", {}),
        ("  ", {}),
        ("drop=0.1, name='a b' ,flag=false", {"drop": 0.1, "name": "a b", "flag": False}),
        ("x=null,", {"x": None}),
    ],
)
def test_parse_model_args(text: str, expected: dict) -> None:
    assert parse_model_args(text) == expected
    for key, value in expected.items():
        assert type(parse_model_args(text)[key]) is type(value)


@pytest.mark.parametrize(
    "text, item",
    [("dim", "'dim'"), ("=3", "'=3'"), ("dim=[1, 2]", "'dim=[1'"), ("a=1,b", "'b'"), ("m={a: 1}", "'m={a: 1}'"),
     ("k=a: b", "'k=a: b'")],
)
def test_parse_model_args_rejects_malformed_items(text: str, item: str) -> None:
    with pytest.raises(ConfigError, match="K=V,K=V") as caught:
        parse_model_args(text)
    assert item in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_missing_says_how_to_install() -> None:
    with pytest.raises(ConfigError, match=r"timm:resnet18 needs the timm package: pip install 'autoprune\[timm\]'"):
        build_model("timm:resnet18")
    assert model_preprocessing("timm:resnet18", None) is None


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}}, id="state_dict-module"),
        pytest.param(lambda sd: {"model": {"_orig_mod." + k: v for k, v in sd.items()}, "epoch": 3}, id="model-compiled"),
        pytest.param(lambda sd: {"net": {"state_dict": {"_orig_mod.module." + k: v for k, v in sd.items()}}},
                     id="nested-twice"),
        pytest.param(lambda sd: dict(sd), id="bare"),
    ],
)
def test_checkpoint_wrappers_and_prefixes_load(net_file: Path, tmp_path: Path, wrap) -> None:
    spec = f"{net_file}:SmallNet"
    trained = build_model(spec, model_args={"width": 4})
    for p in trained.parameters():
        nn.init.normal_(p)
    torch.save(wrap(trained.state_dict()), tmp_path / "ckpt.pt")
    model = build_model(spec, model_args={"width": 4})
    assert load_weights(model, spec, str(tmp_path / "ckpt.pt")) == str(tmp_path / "ckpt.pt")
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_model_prefix_is_kept_when_the_model_has_it(tmp_path: Path) -> None:
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(2, 2)

    saved = Holder()
    torch.save(saved.state_dict(), tmp_path / "h.pt")  # keys model.weight, model.bias: the model's own
    loaded = Holder()
    load_weights(loaded, "holder", str(tmp_path / "h.pt"))
    assert torch.equal(loaded.model.weight, saved.model.weight)


def test_checkpoint_of_another_width_names_shapes(net_file: Path, tmp_path: Path) -> None:
    spec = f"{net_file}:SmallNet"
    torch.save({"state_dict": build_model(spec, model_args={"width": 8}).state_dict()}, tmp_path / "w8.pt")
    with pytest.raises(WeightsError) as caught:
        load_weights(build_model(spec, model_args={"width": 4}), spec, str(tmp_path / "w8.pt"))
    message = str(caught.value)
    assert "\n" not in message and f"does not fit model {spec}" in message
    assert "stem.0.weight is (8, 3, 3, 3) in the checkpoint but (4, 3, 3, 3) in the model" in message
    assert "--model-args" in message and "another architecture" in message


def test_mismatch_names_missing_and_unexpected_keys(net_file: Path, tmp_path: Path) -> None:
    spec = f"{net_file}:SmallNet"
    state = build_model(spec, model_args={"width": 4}).state_dict()
    state["extra.weight"] = state.pop("head.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(WeightsError, match=r"missing, e.g. head.weight.*unexpected parameters, e.g. extra.weight"):
        load_weights(build_model(spec, model_args={"width": 4}), spec, str(tmp_path / "renamed.pt"))


def test_model_preprocessing(net_file: Path) -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    crop, got_mean, got_std, resize = model_preprocessing("torchvision:resnet18", "IMAGENET1K_V1")
    assert (crop, resize) == (224, 256)
    assert got_mean == pytest.approx(mean) and got_std == pytest.approx(std)
    assert model_preprocessing("torchvision:resnet18", None) is None
    assert model_preprocessing("torchvision:resnet18", "/some/ckpt.pt") is None
    assert model_preprocessing(f"{net_file}:SmallNet", "IMAGENET1K_V1") is None
    assert model_preprocessing("resnet20", None) is None
