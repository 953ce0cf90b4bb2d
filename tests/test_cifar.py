"""Integration on the shared CIFAR-10 copy and weights (``pytest -m slow``)."""

import json

import pytest

from autoprune.core.budget import Budget
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.search import get_searcher
from tests.conftest import needs_cifar

pytestmark = [pytest.mark.slow, needs_cifar]


@pytest.mark.parametrize("env, expected", [("resnet20-cifar10", 0.810), ("resnet56-cifar10", 0.832)])
def test_dense_accuracy_on_all_test_images_matches_the_published_copy(cli, env, expected):
    code, out, err = cli("evaluate", "--env", env, "--split", "test", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 10_000 and result["bn_recalibrated"] is False
    assert abs(result["accuracy"] - expected) <= 0.003


def test_proxy_and_report_halves_are_disjoint_and_calibration_is_train():
    exp = Experiment.from_config(load_env("resnet20-cifar10"))
    search, report = exp.split("test-search"), exp.split("test-report")
    assert len(search) == len(report) == 5000
    rows = lambda d: {hash(img.numpy().tobytes()) for img in d.images}  # noqa: E731
    assert len(rows(search) & rows(report)) < 5  # JPEG copies hold a handful of identical images
    assert len(exp.evaluator.proxy) == 1000
    assert exp.config.splits["calibration"] == "train"


def test_uniform_and_random_search_meet_the_budget_on_resnet20(cli, tmp_path):
    exp = Experiment.from_config(load_env("resnet20-cifar10"))
    budget = Budget.parse("0.5flops")
    for method, evals in (("uniform", 1), ("random", 3)):
        result = get_searcher(method)(exp.evaluator, budget, evals=evals, seed=0).search()
        best = result.best
        flops = best.flops / exp.evaluator.cost.dense_flops
        assert 0.49 <= flops <= 0.5
        assert 0.3 < best.proxy_acc < 0.82  # pruned without fine-tuning: below the dense 81%
    code, out, err = cli("search", "--env", "resnet20-cifar10", "--budget", "0.5flops", "--method", "uniform",
                         "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    code, out, err = cli("apply", str(tmp_path / "run" / "policy.json"), "--env", "resnet20-cifar10",
                         "--out", str(tmp_path / "pruned.pt"))
    assert code == 0, err
