"""Projection of policy shapes onto a budget: never over, under by at most 1%."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.core.cost import CostModel, fvcore_flops
from autoprune.core.projection import project
from autoprune.core.prune import Pruner
from autoprune.core.space import SearchSpace, SpaceConfig
from autoprune.errors import BudgetError
from tests.conftest import WEIGHTS_DIR, needs_weights
from tests.helpers import network


@pytest.fixture(scope="module")
def resnet56():
    model, x = network("resnet56")
    space = SearchSpace.from_model(model, x, SpaceConfig(coupled=False, max_ratio=0.8))
    pruner = Pruner(model, x, space)
    return model, x, space, pruner, CostModel(model, x, space, pruner.prune)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.floats(0.0, 0.8), min_size=27, max_size=27), fraction=st.sampled_from([0.3, 0.5, 0.7]))
def test_projection_meets_budget_tightly(resnet56, shape, fraction):
    model, x, space, pruner, cost = resnet56
    limit = fraction * cost.dense_flops
    policy = project(dict(zip(space.names, shape)), space, cost.flops, limit)
    space.check_policy(policy)
    flops = cost.flops(space.kept(policy))
    assert flops <= limit
    assert flops >= 0.99 * limit


@needs_weights
@pytest.mark.parametrize("name", ["resnet20", "resnet56", "digits-cnn"])
def test_projected_network_meets_budget_by_fvcore(name):
    model, x = network(name, WEIGHTS_DIR)
    space = SearchSpace.from_model(model, x, SpaceConfig(coupled=name == "digits-cnn"))
    pruner = Pruner(model, x, space)
    cost = CostModel(model, x, space, pruner.prune)
    dense = fvcore_flops(model, x)
    for metric, fn, dense_value in [("flops", cost.flops, dense), ("params", cost.params, cost.dense_params)]:
        policy = project({n: 0.5 for n in space.names}, space, fn, 0.5 * dense_value)
        network_ = pruner.prune(space.kept(policy))
        measured = fvcore_flops(network_, x) if metric == "flops" else sum(p.numel() for p in network_.parameters())
        assert 0.99 * 0.5 * dense_value <= measured <= 0.5 * dense_value


def test_uniform_shape_without_fill_is_uniform(resnet56):
    model, x, space, pruner, cost = resnet56
    policy = project({n: 0.0 for n in space.names}, space, cost.flops, 0.5 * cost.dense_flops, fill=False)
    kept_fractions = {round(k / space.unit(n).channels, 1) for n, k in space.kept(policy).items()}
    assert len(kept_fractions) == 1  # one ratio, up to channel rounding
    assert cost.flops(space.kept(policy)) <= 0.5 * cost.dense_flops


def test_impossible_and_slack_budgets(resnet56):
    model, x, space, pruner, cost = resnet56
    with pytest.raises(BudgetError, match="cannot be met"):
        project({}, space, cost.flops, 0.05 * cost.dense_flops)
    policy = project({n: 0.5 for n in space.names}, space, cost.flops, 2 * cost.dense_flops)
    assert all(r == 0.0 for r in policy.values())  # a budget above the dense cost prunes nothing
