"""NetAdapt: the decaying schedule, per-unit cuts, the budget (exact and as measured), history and options."""

from __future__ import annotations

import pandas as pd
import pytest

from autoprune.core.budget import Budget
from autoprune.core.cost import LatencySettings
from autoprune.core.latency_table import LatencyTable
from autoprune.errors import ConfigError
from autoprune.experiment import Experiment
from autoprune.finetune.short import ShortFinetune
from autoprune.presets import load_env
from autoprune.search import NetAdaptSearcher, RandomSearcher


@pytest.fixture(scope="module")
def digits() -> Experiment:
    return Experiment.from_config(load_env("digits-demo"))


@pytest.fixture(scope="module")
def digits_timed() -> Experiment:
    """The digits demo measuring latency, with a latency lookup table."""
    settings = LatencySettings(repeats=5, warmup=1)
    exp = Experiment.from_config(load_env("digits-demo"), latency=settings)
    exp.evaluator.latency_table = LatencyTable.build(exp.model, exp.example_inputs, exp.space, settings,
                                                     exp.evaluator.pruner.prune, points=6, pair_points=2)
    return exp


def _search(exp: Experiment, budget: str = "0.5flops", evals: int = 60, **options):
    exp.evaluator.observers.clear()
    searcher = NetAdaptSearcher(exp.evaluator, Budget.parse(budget), evals=evals, **options)
    return searcher, searcher.search()


@pytest.mark.parametrize("budget", ["0.5flops", "0.4params"])
def test_netadapt_shrinks_until_the_budget_is_met(digits, budget, tmp_path):
    searcher, result = _search(digits, budget, step=0.1, decay=0.9, run_dir=tmp_path)
    b = Budget.parse(budget)
    cost, limit = searcher.cost, searcher.limit
    assert result.best is not None and cost(result.best.kept) <= limit
    assert max(cost(c.kept) for c in result.candidates if c.meta["within_budget"]) >= 0.97 * limit
    history = pd.read_csv(tmp_path / "netadapt.csv")
    assert {"iteration", "unit", "kept", "resource", "accuracy", "chosen"} <= set(history.columns)
    steps = history[history["unit"].str.startswith("features")]
    assert (steps.groupby("iteration")["chosen"].sum() == 1).all()  # one candidate kept per iteration
    chosen = steps[steps["chosen"]]
    assert chosen["resource"].is_monotonic_decreasing
    # each iteration's cut: the first reduces the dense cost by step x dense, and no candidate cuts past its target
    dense = digits.evaluator.dense_cost(b.metric)
    assert steps[steps["iteration"] == 0]["target"].iloc[0] == pytest.approx(0.9 * dense)
    assert (steps["resource"] <= steps["target"] + 1e-6).mean() > 0.8  # the rest: units that cannot reach it alone
    assert len(history) == result.evaluations


def test_netadapt_is_deterministic_and_its_candidates_follow_the_cuts(digits):
    _, first = _search(digits, step=0.1, decay=0.9)
    _, again = _search(digits, step=0.1, decay=0.9, seed=7)
    assert [c.policy for c in first.candidates] == [c.policy for c in again.candidates]
    for c in first.candidates:
        if "unit" in c.meta:  # every candidate differs from the network it came from in one unit
            assert c.kept[c.meta["unit"]] < digits.space.unit(c.meta["unit"]).channels


def test_netadapt_projects_when_evaluations_run_out(digits):
    searcher, result = _search(digits, evals=6)
    assert result.evaluations == 6  # one iteration, then the current network and runners-up projected onto the budget
    first = [c for c in result.candidates if c.meta.get("iteration") == 0 and "unit" in c.meta]
    projections = [c for c in result.candidates if c.meta.get("step") == "projection"]
    assert len(first) + len(projections) == 6 and result.candidates[-len(projections):] == projections
    assert all(c.meta["within_budget"] and searcher.cost(c.kept) >= 0.97 * searcher.limit for c in projections)
    assert result.best in projections


def test_netadapt_drop_per_cost_selection_scores_the_dense_network_first(digits):
    _, result = _search(digits, step=0.2, decay=1.0, select="drop-per-cost")
    assert result.candidates[0].meta["step"] == "dense"
    assert all(v == u.channels for u, v in zip(digits.space.units, result.candidates[0].kept.values()))
    assert result.best is not None


@pytest.mark.parametrize("options, key", [
    ({"step": 0.0}, "--netadapt-step"), ({"step": 1.0}, "--netadapt-step"), ({"decay": 0.0}, "--netadapt-decay"),
    ({"decay": 1.5}, "--netadapt-decay"), ({"select": "best"}, "'best'"), ({"short_ft_steps": -2}, "--short-ft-steps"),
])
def test_netadapt_rejects_bad_options(digits, options, key):
    with pytest.raises(ConfigError, match=key):
        NetAdaptSearcher(digits.evaluator, Budget.parse("0.5flops"), evals=5, **options)


def test_short_finetune_ranks_fine_tuned_candidates(digits):
    scored = digits.evaluator.count
    searcher = NetAdaptSearcher(digits.evaluator, Budget.parse("0.5flops"), evals=6, short_ft_steps=2)
    assert isinstance(searcher.evaluator.recovery, ShortFinetune)  # on its own copy: the shared Evaluator is unchanged
    assert digits.evaluator.recovery is None and searcher.evaluator is not digits.evaluator
    result = searcher.search()
    assert result.evaluations == 6 and all(c.ok for c in result.candidates)
    assert result.candidates[0].timings["recover"] > 0
    assert digits.evaluator.count == scored  # none of its cached plain scores stood in for a fine-tuned one


def test_netadapt_stops_on_measured_latency(digits_timed):
    exp, table = digits_timed, digits_timed.evaluator.latency_table
    cost = exp.evaluator.cost_of("latency")
    assert cost({u.name: u.min_kept for u in exp.space.units}) == table.predict({u.name: u.min_kept for u in exp.space.units})
    budget = Budget.parse("0.8latency")
    searcher = NetAdaptSearcher(exp.evaluator, budget, evals=80, step=0.1, decay=1.0)
    result = searcher.search()
    assert searcher.limit == pytest.approx(0.8 * table.dense_ms)
    assert all(c.latency_ms is not None for c in result.candidates)  # every candidate is measured too
    history = pd.DataFrame(searcher.history)
    final = history[history["chosen"]].iloc[-1]
    if final["unit"] != "(projection)":  # it stops on the measured latency of the network it kept, not the prediction
        assert final["latency_ms"] <= searcher.limit
    assert result.best is not None


def test_lookup_table_latency_budget_is_filled(digits_timed):
    exp = digits_timed
    searcher = RandomSearcher(exp.evaluator, Budget.parse("0.8latency"), evals=1)
    kept = exp.space.kept(searcher.project({n: 0.3 * (i % 2) for i, n in enumerate(exp.space.names)}))
    assert searcher.cost(kept) <= searcher.limit
    for unit in exp.space.units:  # no unit can take one more rounding step of channels without breaking the budget
        if kept[unit.name] < unit.max_kept:
            more = {**kept, unit.name: min(unit.max_kept, kept[unit.name] + unit.round_to)}
            assert searcher.cost(more) > searcher.limit
