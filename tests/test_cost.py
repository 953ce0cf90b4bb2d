"""FLOPs and params: fvcore against an independent count, and the CostModel against fvcore."""

import random

import pytest
import torch

from autoprune.core.cost import CostModel, count_params, fvcore_flops, measure_latency
from autoprune.core.prune import Pruner
from autoprune.core.space import SearchSpace, SpaceConfig
from tests.conftest import WEIGHTS_DIR, needs_weights
from tests.helpers import NETWORKS, count_macs, network

NAMES = [pytest.param(n, marks=needs_weights) if n in ("resnet20", "resnet56") else n for n in NETWORKS]


@pytest.mark.parametrize("name", NAMES)
def test_fvcore_matches_independent_count_dense_and_pruned(name):
    model, x = network(name, WEIGHTS_DIR)
    assert fvcore_flops(model, x) == count_macs(model, x)
    space = SearchSpace.from_model(model, x, SpaceConfig())
    pruned = Pruner(model, x, space).prune({u.name: u.kept(0.5) for u in space.units})
    assert fvcore_flops(pruned, x) == count_macs(pruned, x)


COST_CASES = [
    pytest.param("resnet20", False, marks=needs_weights),
    pytest.param("resnet20", True, marks=needs_weights),
    pytest.param("resnet56", False, marks=needs_weights),
    ("digits-cnn", True),
    ("torchvision:resnet18", False),
    ("torchvision:resnet18", True),
    ("torchvision:mobilenet_v2", False),
    ("torchvision:mobilenet_v2", True),
    ("torchvision:vgg11_bn", True),
]


@pytest.mark.parametrize("name, coupled", COST_CASES)
def test_cost_model_equals_fvcore_on_pruned_networks(name, coupled):
    model, x = network(name, WEIGHTS_DIR)
    space = SearchSpace.from_model(model, x, SpaceConfig(coupled=coupled, round_to=1))
    pruner = Pruner(model, x, space)
    cost = CostModel(model, x, space, pruner.prune)
    assert cost.dense_flops == fvcore_flops(model, x)
    assert cost.dense_params == count_params(model)
    rng = random.Random(0)
    for _ in range(2):
        kept = {u.name: u.kept(rng.uniform(0.0, 0.8)) for u in space.units}
        pruned = pruner.prune(kept)
        assert cost.flops(kept) == fvcore_flops(pruned, x)
        assert cost.params(kept) == count_params(pruned)


def test_latency_is_positive_and_tracks_size():
    model, x = network("digits-cnn")
    space = SearchSpace.from_model(model, x, SpaceConfig())
    small = Pruner(model, x, space).prune({u.name: u.min_kept for u in space.units})
    dense_ms = measure_latency(model, x.repeat(64, 1, 1, 1), repeats=15, threads=1)
    small_ms = measure_latency(small, x.repeat(64, 1, 1, 1), repeats=15, threads=1)
    assert 0 < small_ms < dense_ms
    assert torch.get_num_threads() >= 1
