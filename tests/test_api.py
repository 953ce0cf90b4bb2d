"""The public Python API: the names a script needs, importable from ``autoprune`` itself."""

from __future__ import annotations

import pytest
import torch

import autoprune
from autoprune import Budget, build_experiment, export_policy, search_policy
from autoprune.errors import ConfigError
from autoprune.experiment import configure


@pytest.fixture(scope="module")
def digits():
    return build_experiment("digits-demo", {"proxy_images": 200})


def test_every_public_name_resolves():
    for name in autoprune.__all__:
        assert getattr(autoprune, name) is not None
    with pytest.raises(AttributeError):
        autoprune.no_such_name  # noqa: B018


def test_search_policy_meets_the_budget_and_builds_a_smaller_network(digits):
    result = search_policy(digits.evaluator, "0.5flops", method="random", evals=4, seed=0)
    assert result.method == "random" and result.evaluations == 4
    assert result.best.flops <= 0.5 * digits.evaluator.cost.dense_flops
    pruned = digits.evaluator.build(result.best.policy)
    assert sum(p.numel() for p in pruned.parameters()) == result.best.params
    again = search_policy(digits.evaluator, Budget.parse("0.5flops"), method="random", evals=4, seed=0)
    assert [dict(c.policy) for c in again.candidates] == [dict(c.policy) for c in result.candidates]


def test_search_policy_passes_method_options_and_rejects_others(digits):
    result = search_policy(digits.evaluator, "0.5flops", method="optuna", evals=3, seed=0, sampler="random")
    assert result.evaluations == 3
    with pytest.raises(ConfigError, match="takes no option warmup"):
        search_policy(digits.evaluator, "0.5flops", method="random", warmup=3)


def test_overrides_reach_the_experiment_and_unknown_ones_are_refused(digits):
    assert len(digits.evaluator.proxy.labels) == 200
    with pytest.raises(ConfigError, match="unknown experiment override 'colour'"):
        build_experiment("digits-demo", {"colour": "red"})


def test_calibration_and_report_image_counts_reach_a_preset_experiment():
    whole = build_experiment("digits-demo", {"calibration_images": 256})
    assert whole.config.proxy["calibration_batches"] == 2 and "calibration_images" not in whole.config.proxy
    assert [len(b) for b in whole.evaluator.proxy.calibration] == [128, 128]
    partial = build_experiment("digits-demo", {"calibration_images": 200, "report_images": 50})
    assert [len(b) for b in partial.evaluator.proxy.calibration] == [128, 72]
    assert torch.equal(partial.evaluator.proxy.calibration[0], whole.evaluator.proxy.calibration[0])  # same draw
    assert len(partial.split("report")) == 50 and len(whole.split("report")) == 360
    assert configure("digits-demo", {"calibration_images": 200}).proxy["calibration_images"] == 200
    for key, value in (("report_images", 0), ("proxy_images", 0), ("calibration_images", -1), ("report_images", 2.5)):
        with pytest.raises(ConfigError, match=f"--{key.replace('_', '-')} .* must be a whole number"):
            configure("digits-demo", {key: value})  # refused before any data is loaded


def test_export_policy_from_a_searched_record(digits, tmp_path):
    from autoprune import PolicyRecord

    result = search_policy(digits.evaluator, "0.5flops", method="uniform", evals=1)
    kept = digits.space.kept(result.best.policy)
    record = PolicyRecord(ratios=dict(result.best.policy), channels={u.name: {"dense": u.channels, "kept": kept[u.name]}
                                                                     for u in digits.space.units},
                          model="digits-cnn", input_shape=list(digits.example_inputs.shape), criterion="l1",
                          round_to={u.name: u.round_to for u in digits.space.units}, budget="0.5flops", metrics={},
                          found_by={"method": "uniform"})
    text = export_policy(record, digits.space, digits.model, "torch-pruning")
    assert set(__import__("json").loads(text)) == set(digits.space.names)
