"""The registry of budget metrics: a metric registered in one place is parsed, searched, recorded and summarised."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import optuna
import pandas as pd
import pytest

from autoprune.core.budget import Budget
from autoprune.core.metrics import METRICS, BudgetMetric, get_metric, register_metric
from autoprune.core.policy import PolicyRecord
from autoprune.errors import BudgetError, ConfigError
from autoprune.experiment import build_experiment


def _channels(evaluator) -> Callable[[Mapping[str, int]], float]:
    """Toy cost: the number of kept channels over every unit."""
    units = evaluator.space.units

    def cost(kept: Mapping[str, int]) -> float:
        return sum(kept.get(u.name, u.channels) for u in units)

    return cost


@pytest.fixture
def channels() -> Iterator[BudgetMetric]:
    """The toy metric ``channels``, registered for one test and removed afterwards."""
    metric = register_metric(BudgetMetric(
        name="channels", label="channels", column="channels", cost=_channels,
        dense=lambda e: sum(u.channels for u in e.space.units), units={"kch": 1e3}, exact=True,
    ))
    yield metric
    METRICS.pop("channels")


def test_builtin_metrics():
    assert list(METRICS)[:3] == ["flops", "params", "latency"]
    assert [get_metric(n).column for n in ("flops", "params", "latency")] == ["flops", "params", "latency_ms"]
    assert get_metric("flops").label == "FLOPs (MACs, fvcore)"
    assert get_metric("latency").measured and not get_metric("flops").measured


def test_toy_metric_parses(channels):
    budget = Budget.parse("0.5channels")
    assert (budget.metric, budget.value, budget.relative) == ("channels", 0.5, True)
    assert Budget.parse("50%channels") == budget
    absolute = Budget.parse("0.2kch")
    assert (absolute.metric, absolute.value, absolute.relative) == ("channels", 200.0, False)
    assert Budget.parse(str(absolute)) == absolute
    with pytest.raises(BudgetError, match=r"'0\.5chans'.*channels.*kch"):  # the message lists registered spellings
        Budget.parse("0.5chans")


def test_toy_metric_unregistered_afterwards():
    assert "channels" not in METRICS
    with pytest.raises(BudgetError, match="cannot parse"):
        Budget.parse("0.5channels")


def test_duplicate_and_unknown_metric(channels):
    with pytest.raises(ConfigError, match="already registered"):
        register_metric(channels)
    clash = BudgetMetric(name="chans", label="x", column="chans", cost=_channels, units={"ms": 1.0})
    with pytest.raises(ConfigError, match="'ms'|ms already"):  # a spelling of latency
        register_metric(clash)
    with pytest.raises(ConfigError, match="column 'flops'"):
        register_metric(BudgetMetric(name="other", label="x", column="flops", cost=_channels))
    with pytest.raises(ConfigError, match="column 'status'"):
        register_metric(BudgetMetric(name="other", label="x", column="status", cost=_channels))
    assert "chans" not in METRICS and "other" not in METRICS
    with pytest.raises(ConfigError, match="unknown budget metric 'nope'.*flops, params, latency, channels"):
        get_metric("nope")


def test_evaluator_prices_through_the_registry(channels):
    evaluator = build_experiment("digits-demo").evaluator
    dense = sum(u.channels for u in evaluator.space.units)
    assert evaluator.dense_cost("channels") == dense
    kept = {u.name: u.min_kept for u in evaluator.space.units}
    assert evaluator.cost_of("channels")(kept) == sum(kept.values())
    assert evaluator.dense_cost("flops") == evaluator.cost.dense_flops
    with pytest.raises(ConfigError, match="unknown budget metric"):
        evaluator.cost_of("bananas")
    candidate = evaluator.evaluate(evaluator.space.policy_from_kept(kept))
    assert candidate.costs == {"channels": sum(kept.values())}
    assert candidate.value("channels") == sum(kept.values()) and candidate.value("flops") == candidate.flops


def test_search_with_toy_metric(cli, tmp_path: Path, channels):
    run = tmp_path / "run"
    code, out, err = cli("search", "--budget", "0.5channels", "--method", "random", "--evals", "4", "--out", str(run),
                         "--quiet")
    assert code == 0, err
    record = PolicyRecord.load(run / "policy.json")
    dense = sum(c["dense"] for c in record.channels.values())
    kept = sum(c["kept"] for c in record.channels.values())
    assert kept <= 0.5 * dense
    assert kept >= 0.45 * dense  # projection filled the budget channel step by channel step (the metric is exact)
    assert record.metrics["channels"] == kept

    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 4
    assert list(trials.columns[trials.columns.get_loc("latency_ms") + 1:][:1]) == ["channels"]
    recomputed = trials[[c for c in trials.columns if c.startswith("kept:")]].sum(axis=1)
    assert (trials["channels"] == recomputed).all()
    assert (trials["within_budget"] == (recomputed <= 0.5 * dense)).all()

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'study.db'}")
    assert sorted(t.user_attrs["channels"] for t in study.trials) == sorted(trials["channels"])
    summary = (run / "summary.md").read_text()
    assert f"limit {0.5 * dense:g} channels" in summary
    assert f"| channels | {dense:g} | {kept:g} |" in summary


def test_builtin_columns_unchanged_without_extra_metrics(cli, tmp_path: Path):
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "random", "--evals", "2", "--out",
                       str(tmp_path / "r"), "--quiet")
    assert code == 0, err
    columns = list(pd.read_csv(tmp_path / "r" / "trials.csv").columns)
    assert columns[:10] == ["trial", "method", "status", "within_budget", "proxy_acc", "flops", "params", "latency_ms",
                            "cached", "reason"]
