"""The contract every searcher must meet: budget met, reproducible, every candidate recorded."""

import pandas as pd
import pytest

from autoprune.core.budget import Budget
from autoprune.core.cost import fvcore_flops
from autoprune.errors import ConfigError
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.search import SEARCHERS, get_searcher
from autoprune.trials.record import TrialRecorder

EVALS = 6
# the rl agents warm up for 100 episodes by default (AMC); a tiny search needs a short warm-up
OPTIONS = {"ddpg": {"warmup": 2}, "td3": {"warmup": 2}, "sac": {"warmup": 2}}


@pytest.fixture(scope="module")
def digits() -> Experiment:
    return Experiment.from_config(load_env("digits-demo"))


def _run(exp: Experiment, method: str, seed: int, budget: str = "0.5flops", evals: int = EVALS):
    exp.evaluator.observers.clear()
    return get_searcher(method)(exp.evaluator, Budget.parse(budget), evals=evals, seed=seed, **OPTIONS.get(method, {})).search()


@pytest.mark.parametrize("method", SEARCHERS)
@pytest.mark.parametrize("budget", ["0.5flops", "0.4params"])
def test_best_policy_meets_budget_tightly(digits, method, budget):
    result = _run(digits, method, seed=0, budget=budget)
    assert result.best is not None and result.best.ok
    network = digits.evaluator.build(result.best.policy)
    metric = Budget.parse(budget).metric
    dense = fvcore_flops(digits.model, digits.example_inputs) if metric == "flops" else digits.evaluator.cost.dense_params
    measured = fvcore_flops(network, digits.example_inputs) if metric == "flops" else sum(p.numel() for p in network.parameters())
    fraction = Budget.parse(budget).value
    assert measured <= fraction * dense
    assert measured >= 0.97 * fraction * dense  # the digits CNN is small: coarse channel granularity


@pytest.mark.parametrize("method", SEARCHERS)
def test_reproducible_with_seed(digits, method):
    first = [c.policy for c in _run(digits, method, seed=1).candidates]
    again = [c.policy for c in _run(digits, method, seed=1).candidates]
    assert first == again
    if not get_searcher(method).deterministic:  # uniform, NetAdapt and tp-global have nothing random
        assert [c.policy for c in _run(digits, method, seed=2).candidates] != first


@pytest.mark.parametrize("method", SEARCHERS)
def test_every_candidate_is_recorded(digits, method, tmp_path):
    digits.evaluator.observers.clear()
    digits.evaluator.observers.append(TrialRecorder(tmp_path / "trials.csv", digits.space.names))
    searcher = get_searcher(method)(digits.evaluator, Budget.parse("0.5flops"), evals=EVALS, seed=0, **OPTIONS.get(method, {}))
    result = searcher.search()
    digits.evaluator.observers.clear()
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == result.evaluations == min(EVALS, searcher.planned_evaluations)  # uniform, tp-global: one
    assert (trials["method"] == method).all()
    # NetAdapt shrinks step by step: only its last candidate is within the budget
    assert (trials["within_budget"].tail(1) if method == "netadapt" else trials["within_budget"]).all()
    assert trials["proxy_acc"].tolist() == pytest.approx([c.proxy_acc for c in result.candidates])
    for name in digits.space.names:
        assert trials[f"kept:{name}"].tolist() == [c.kept[name] for c in result.candidates]


def test_trial_numbers_count_rows_over_workers_and_resumes(tmp_path):
    from autoprune.core.evaluator import Candidate
    from autoprune.core.policy import Policy

    def candidate(reason: str = "") -> Candidate:
        return Candidate(0, Policy({"a": 0.5}), {"a": 4}, "fail" if reason else "ok", None if reason else 0.9,
                         100, 10, reason=reason or None, meta={"method": "random"})

    path = tmp_path / "trials.csv"
    first, second = TrialRecorder(path, ["a"]), TrialRecorder(path, ["a"])  # two workers on one file
    for recorder, reason in [(first, ""), (second, "line one\nline two"), (first, ""), (first, ""), (second, "")]:
        recorder(candidate(reason))
    TrialRecorder(path, ["a"])(candidate())  # a resumed run
    trials = pd.read_csv(path)
    assert trials["trial"].tolist() == list(range(6))
    assert trials["reason"][1] == "line one\nline two" and trials["kept:a"].tolist() == [4] * 6


def test_failed_candidate_is_a_record_not_a_crash(digits, monkeypatch):
    calls = {"n": 0}
    correct = digits.evaluator.proxy.correct

    def flaky(model, start=0, stop=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return correct(model, start, stop)

    monkeypatch.setattr(digits.evaluator.proxy, "correct", flaky)
    digits.evaluator._cache.clear()
    result = _run(digits, "random", seed=5)
    assert [c.status for c in result.candidates].count("fail") == 1
    failed = next(c for c in result.candidates if not c.ok)
    assert "out of memory" in failed.reason
    assert result.best is not None and result.best.ok


def test_random_beats_or_matches_its_worst_sample(digits):
    result = _run(digits, "random", seed=0, evals=10)
    accs = [c.proxy_acc for c in result.candidates]
    assert result.best.proxy_acc == max(accs)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError, match="uniform, random"):
        get_searcher("bogus")
