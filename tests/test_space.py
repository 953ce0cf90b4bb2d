"""Search spaces found from the dependency graph."""

import re

import pytest

from autoprune.core.space import SearchSpace, SpaceConfig
from autoprune.errors import ConfigError, UnsupportedModelError
from autoprune.presets import load_space, space_names
from tests.helpers import network


def test_cifar_resnet_default_is_first_conv_of_each_block():
    model, x = network("resnet56")
    space = SearchSpace.from_model(model, x, load_space("cifar-resnet"))
    assert len(space) == 27
    assert all(re.fullmatch(r"layer[123]\.\d\.conv1", n) for n in space.names)
    unit = space.unit("layer2.0.conv1")
    assert (unit.channels, unit.layer.kind, unit.layer.stride, unit.layer.in_channels) == (32, "conv", 2, 16)
    assert dict(unit.members) == {"layer2.0.conv1": "out", "layer2.0.bn1": "both", "layer2.0.conv2": "in"}


def test_coupled_option_adds_one_unit_per_residual_stage():
    model, x = network("resnet20")
    space = SearchSpace.from_model(model, x, load_space("cifar-resnet-coupled"))
    stages = [n for n in space.names if not n.endswith(".conv1") or n == "conv1"]
    assert stages == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    stage2 = dict(space.unit("layer2.0.conv2").members)
    assert stage2["layer2.0.shortcut"] == "out" and stage2["layer3.0.shortcut"] == "in"
    assert "linear" not in space.names


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:vgg11_bn", "digits-cnn"])
def test_classifier_is_never_a_unit(name):
    model, x = network(name)
    space = SearchSpace.from_model(model, x, SpaceConfig())
    classifier = [n for n, m in model.named_modules() if m.__class__.__name__ == "Linear"][-1]
    assert classifier not in space.names
    assert len(space) >= 5


def test_bounds_and_rounding():
    unit_space = SearchSpace.from_model(*network("resnet20"), SpaceConfig(max_ratio=0.8, round_to=4))
    unit = unit_space.unit("layer1.0.conv1")  # 16 channels
    assert unit.min_kept == 4 and unit.max_kept == 16
    for ratio in [0.0, 0.1, 0.33, 0.5, 0.79, 0.8]:
        kept = unit.kept(ratio)
        assert kept % 4 == 0 and 4 <= kept <= 16
    odd = SearchSpace.from_model(*network("resnet20"), SpaceConfig(max_ratio=0.8, round_to=1)).unit("layer1.0.conv1")
    assert odd.min_kept == 4  # ceil(16 * 0.2): never prunes past max_ratio
    assert 1 - odd.min_kept / odd.channels <= 0.8


def test_rules_override_bounds_by_pattern():
    config = SpaceConfig.from_dict({"include": ["layer*.*.conv1"], "coupled": False,
                                    "rules": [{"pattern": "layer3.*", "max_ratio": 0.5, "round_to": 8}]})
    space = SearchSpace.from_model(*network("resnet20"), config)
    assert space.unit("layer3.1.conv1").max_ratio == 0.5 and space.unit("layer3.1.conv1").round_to == 8
    assert space.unit("layer1.1.conv1").max_ratio == 0.8


def test_empty_space_and_bad_bounds_are_errors():
    with pytest.raises(UnsupportedModelError, match="no prunable unit"):
        SearchSpace.from_model(*network("resnet20"), SpaceConfig(include=("nothing*",)))
    with pytest.raises(ConfigError, match="min_ratio <= max_ratio"):
        SpaceConfig.from_dict({"min_ratio": 0.5, "max_ratio": 0.2})
    with pytest.raises(ConfigError, match="unknown keys"):
        SpaceConfig.from_dict({"includes": ["*"]})


def test_every_shipped_space_preset_loads():
    for name in space_names():
        assert load_space(name).name == name
