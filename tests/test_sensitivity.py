"""Sensitivity scan and cache, the budget allocator, the sensitivity searcher, its priors and its CLI."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from autoprune.core.budget import Budget
from autoprune.core.cost import fvcore_flops
from autoprune.core.projection import project
from autoprune.errors import BudgetError, ConfigError
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.search import get_searcher
from autoprune.search.allocation import allocate, predicted_drop
from autoprune.search.sensitivity import scan_options
from autoprune.search.sensitivity_scan import parse_ratios, scan, scan_key
from tests.conftest import needs_cifar

GRID = (0.3, 0.6, 0.8)


@pytest.fixture(scope="module")
def digits() -> Experiment:
    return Experiment.from_config(load_env("digits-demo"))


@pytest.fixture(scope="module")
def table(digits):
    return scan(digits.evaluator, GRID)


@pytest.mark.parametrize("text, ratios", [
    ("0.1:0.9:0.1", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
    ("0.25:0.75:0.25", (0.25, 0.5, 0.75)),
    ("0.8, 0.2,0.5", (0.2, 0.5, 0.8)),
    ("0.5", (0.5,)),
])
def test_parse_ratios(text, ratios):
    assert parse_ratios(text) == pytest.approx(ratios)


@pytest.mark.parametrize("text, key", [
    ("0:0.5:0.1", "outside (0, 1)"),
    ("0.5:1.0:0.25", "outside (0, 1)"),
    ("1.5", "outside (0, 1)"),
    ("0.9:0.1:0.1", "start <= stop"),
    ("0.1:0.9:0", "step > 0"),
    ("0.1:0.9", "cannot parse"),
    ("a,b", "cannot parse"),
    ("-0.2,0.5", "outside (0, 1)"),
])
def test_parse_ratios_rejects(text, key):
    with pytest.raises(ConfigError, match=re.escape(key)) as error:
        parse_ratios(text)
    assert repr(text) in str(error.value)


def test_scan_prunes_one_unit_at_a_time(digits, table):
    frame = table.frame
    assert list(frame.columns[:5]) == ["unit", "ratio", "kept", "channels", "accuracy"]
    assert len(frame) == len(digits.space) * (len(GRID) + 1)
    assert table.units == list(digits.space.names)
    assert 0.9 < table.dense_accuracy <= 1.0
    for unit in digits.space.units:
        rows = frame[frame["unit"] == unit.name].sort_values("ratio")
        assert rows["kept"].tolist() == [unit.channels] + [unit.kept(r) for r in GRID]
        assert rows["flops"].is_monotonic_decreasing and rows["flops_saved"].iloc[0] == 0
        assert table.drop(unit.name, unit.channels) == 0.0
    assert frame["accuracy"].between(0, 1).all()
    # the unit before the classifier pruned by 80% alone costs accuracy on the digits CNN
    assert table.drop("features.13", digits.space.unit("features.13").kept(0.8)) > 0.02


def test_scan_is_cached_and_unrecorded(digits, table, monkeypatch):
    seen = []
    digits.evaluator.observers.append(seen.append)
    calls = {"n": 0}
    evaluate = digits.evaluator.evaluate

    def counting(*args, **kwargs):
        calls["n"] += 1
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(digits.evaluator, "evaluate", counting)
    try:
        again = scan(digits.evaluator, GRID)
        assert calls["n"] == 0 and again.evaluations == 0
        pd.testing.assert_frame_equal(again.frame, table.frame)
        assert table.path is not None and table.path.is_file() and table.path.parent.name == "sensitivity"
        fresh = scan(digits.evaluator, (0.5,), cache=False)
        assert calls["n"] == fresh.evaluations == 1 + len(digits.space)
        assert seen == []  # scan points are not search candidates
    finally:
        digits.evaluator.observers.clear()
    assert scan_key(digits.evaluator, GRID) != scan_key(digits.evaluator, (0.5,))


@pytest.mark.parametrize("budget", ["0.3flops", "0.5flops", "0.7flops", "0.4params"])
def test_allocation_meets_the_budget_exactly(digits, table, budget):
    b = Budget.parse(budget)
    cost = digits.evaluator.cost_of(b.metric)
    limit = b.limit(digits.evaluator.dense_cost(b.metric))
    kept = allocate(digits.space, table.drop, cost, limit, scan_options(digits.space, GRID))
    assert cost(kept) <= limit
    assert cost(kept) >= 0.97 * limit
    if b.metric == "flops":  # the exact cost model is fvcore's count on the real pruned network
        network = digits.evaluator.pruner.prune(kept)
        assert fvcore_flops(network, digits.example_inputs) == cost(kept)


def test_allocation_beats_sampled_policies_on_its_objective(digits, table):
    cost, limit = digits.evaluator.cost.flops, 0.5 * digits.evaluator.cost.dense_flops
    options = scan_options(digits.space, GRID)
    kept = allocate(digits.space, table.drop, cost, limit, options)
    ours = predicted_drop(kept, table.drop, digits.space)
    rng = np.random.default_rng(0)
    lowest = {n: o[0] for n, o in options.items()}
    for _ in range(100):
        shape = {u.name: float(rng.uniform(0, 0.8)) for u in digits.space.units}
        other = digits.space.kept(project(shape, digits.space, cost, limit))
        if all(other[n] >= lowest[n] for n in other):
            assert ours <= predicted_drop(other, table.drop, digits.space) + 1e-9


def test_allocation_prefers_insensitive_units(digits):
    cheap = "features.10"

    def drop(unit: str, kept: int) -> float:  # only the cheap unit can be pruned for free
        return 0.0 if unit == cheap else 1.0 - kept / digits.space.unit(unit).channels

    cost, dense = digits.evaluator.cost.flops, digits.evaluator.cost.dense_flops
    kept = allocate(digits.space, drop, cost, 0.8 * dense, {u.name: u.allowed_kept for u in digits.space.units})
    assert all(kept[u.name] == u.channels for u in digits.space.units if u.name != cheap)  # the cheap unit carries the cut
    assert 0.97 * 0.8 * dense <= cost(kept) <= 0.8 * dense
    with pytest.raises(BudgetError, match="cannot be met"):
        allocate(digits.space, drop, cost, 0.01 * dense, {u.name: u.allowed_kept for u in digits.space.units})


def test_sensitivity_searcher_evaluates_allocations(digits, table, tmp_path):
    digits.evaluator.observers.clear()
    searcher = get_searcher("sensitivity")(digits.evaluator, Budget.parse("0.5flops"), evals=4, seed=0,
                                           ratios="0.3,0.6,0.8", run_dir=tmp_path)
    result = searcher.search()
    assert result.evaluations == 4
    first = result.candidates[0]
    assert first.meta["allocation"] == 0
    assert first.kept == allocate(digits.space, table.drop, digits.evaluator.cost.flops,
                                  0.5 * digits.evaluator.cost.dense_flops, scan_options(digits.space, GRID))
    assert first.meta["predicted_drop"] == pytest.approx(predicted_drop(first.kept, table.drop, digits.space))
    assert all(c.meta["within_budget"] for c in result.candidates)
    assert {p.name for p in tmp_path.iterdir()} == {"sensitivity.csv", "sensitivity_curves.png", "sensitivity_heatmap.png"}


def test_sensitivity_searcher_rejects_a_grid_short_of_the_budget(digits):
    with pytest.raises(BudgetError, match="extend the grid"):
        get_searcher("sensitivity")(digits.evaluator, Budget.parse("0.2flops"), evals=2, ratios="0.1,0.2")


def test_optuna_prior_enqueues_the_allocation(digits, table):
    digits.evaluator.observers.clear()
    result = get_searcher("optuna")(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, prior="sensitivity",
                                    ratios="0.3,0.6,0.8").search()
    allocation = allocate(digits.space, table.drop, digits.evaluator.cost.flops, 0.5 * digits.evaluator.cost.dense_flops,
                          scan_options(digits.space, GRID))
    sample = result.candidates[1].meta["sample"]  # the uniform policy is the first trial, the allocation the second
    assert digits.space.kept(sample) == allocation


def test_rl_prior_narrows_the_ratios(digits, table):
    digits.evaluator.observers.clear()
    searcher = get_searcher("ddpg")(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, warmup=2,
                                    prior="sensitivity", ratios="0.3,0.6,0.8")
    result = searcher.search()
    narrowed = searcher.env.space
    assert narrowed.names == digits.space.names
    assert any(u.max_ratio < v.max_ratio for u, v in zip(narrowed.units, digits.space.units))
    for c in result.candidates:
        assert c.meta["within_budget"]
        for u in narrowed.units:
            assert c.policy[u.name] <= u.max_ratio + 1e-9
            assert c.kept[u.name] == u.kept(c.policy[u.name])  # both spaces round alike within the bounds


def test_cli_sensitivity_writes_and_then_reads_the_cache(cli, tmp_path):
    code, out, err = cli("sensitivity", "--ratios", "0.3,0.6,0.8", "--out", "scan", "--quiet")
    assert code == 0, err
    written = tmp_path / "scan"
    assert {p.name for p in written.iterdir()} == {"config.yaml", "sensitivity.csv", "sensitivity_curves.png",
                                                     "sensitivity_heatmap.png"}
    frame = pd.read_csv(written / "sensitivity.csv")
    assert {"unit", "ratio", "accuracy", "flops"} <= set(frame.columns) and len(frame) == 5 * 4
    code, out, _ = cli("sensitivity", "--ratios", "0.3,0.6,0.8", "--out", "again", "--quiet")
    assert code == 0 and "read from the cache" in out


def test_cli_search_sensitivity_and_netadapt_runs(cli, tmp_path):
    code, out, err = cli("search", "--budget", "0.5flops", "--method", "sensitivity", "--evals", "2", "--ratios",
                         "0.3,0.6,0.8", "--out", "sens", "--quiet")
    assert code == 0, err
    assert (tmp_path / "sens" / "sensitivity.csv").is_file() and (tmp_path / "sens" / "policy.json").is_file()
    assert len(pd.read_csv(tmp_path / "sens" / "trials.csv")) == 2
    code, out, err = cli("search", "--budget", "0.5flops", "--method", "netadapt", "--evals", "12",
                         "--netadapt-step", "0.2", "--netadapt-decay", "1", "--out", "na", "--quiet")
    assert code == 0, err
    history = pd.read_csv(tmp_path / "na" / "netadapt.csv")
    assert list(history.columns[:2]) == ["iteration", "unit"] and history["chosen"].any()


@pytest.mark.parametrize("args, key", [
    (["sensitivity", "--ratios", "0:1:0.1"], "outside (0, 1)"),
    (["sensitivity", "--ratios", "0.1-0.9"], "cannot parse"),
    (["sensitivity", "--ratios", "0.2,1.2"], "outside (0, 1)"),
    (["search", "--budget", "0.5flops", "--method", "sensitivity", "--ratios", "abc"], "cannot parse"),
    (["search", "--budget", "0.5flops", "--method", "random", "--ratios", "0.5"], "--ratios applies"),
    (["search", "--budget", "0.5flops", "--method", "random", "--netadapt-step", "0.1"], "--netadapt-step"),
    (["search", "--budget", "0.5flops", "--method", "netadapt", "--netadapt-step", "1.5"], "--netadapt-step"),
    (["search", "--budget", "0.5flops", "--method", "netadapt", "--short-ft-steps", "-1"], "--short-ft-steps"),
    (["search", "--budget", "0.5flops", "--method", "random", "--prior", "sensitivity"], "--prior applies"),
    (["search", "--budget", "0.5flops", "--method", "netadapt", "--latency-model", "lut"], "latency budgets"),
    (["search", "--budget", "0.6latency", "--method", "optuna", "--prior", "sensitivity"], "--latency-model lut"),
])
def test_cli_rejects(fails, args, key):
    err = fails(*args)
    assert err.startswith("autoprune: error:") and key in err, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is available")
@pytest.mark.parametrize("command", [["search", "--budget", "0.6latency", "--method", "netadapt"], ["sensitivity"]])
def test_cli_latency_on_a_device_that_cannot_be_timed(fails, command):
    assert "'cuda'" in fails(*command, "--device", "cuda")


@needs_cifar
@pytest.mark.slow
def test_sensitivity_allocation_beats_uniform_on_resnet20():
    exp = Experiment.from_config(load_env("resnet20-cifar10"))
    budget = Budget.parse("0.5flops")
    ours = get_searcher("sensitivity")(exp.evaluator, budget, evals=2, ratios="0.2:0.8:0.2").search().best
    uniform = get_searcher("uniform")(exp.evaluator, budget, evals=1).search().best
    assert ours.proxy_acc > uniform.proxy_acc + 0.05
    assert exp.accuracy(exp.evaluator.build(ours.policy)) > exp.accuracy(exp.evaluator.build(uniform.policy))
