"""The evolutionary searcher: children meet the budget by construction, selection runs in racing stages, every
child is a trial; racing on the command line, in the run's record and in Optuna's trials."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

from autoprune.core.budget import Budget
from autoprune.core.policy import Policy
from autoprune.core.projection import tilted_shape
from autoprune.core.proxy import Proxy
from autoprune.experiment import build_experiment
from autoprune.search import get_searcher


@pytest.fixture(scope="module")
def digits():
    return build_experiment("digits-demo", racing="on")


@pytest.mark.parametrize("budget", ["0.4flops", "0.5params"])
def test_children_meet_the_budget_and_spend_it(digits, budget):
    searcher = get_searcher("evolution")(digits.evaluator, Budget.parse(budget), evals=10, seed=3)
    parent = searcher.space.kept(searcher.project({n: 0.0 for n in searcher.space.names}, fill=False))
    for _ in range(1000):
        child = searcher._mutate(parent)
        assert child != parent and searcher.cost(child) <= searcher.limit
        parent = child  # a walk: every child a parent in turn
    for _ in range(30):
        child = searcher._mutate(parent)
        assert child != parent
        assert searcher.cost(child) <= searcher.limit
        for u in searcher.space.units:
            assert child[u.name] in u.allowed_kept
        # spent: no unit can grow by one allowed step without breaking the budget
        for u in searcher.space.units:
            options = u.allowed_kept
            i = options.index(child[u.name])
            if i + 1 < len(options):
                assert searcher.cost({**child, u.name: options[i + 1]}) > searcher.limit


def test_generations_select_in_stages_and_keep_the_books(digits):
    searcher = get_searcher("evolution")(digits.evaluator, Budget.parse("0.3flops"), evals=17, seed=0, offspring=8,
                                         tilts="0")
    result = searcher.search()
    stages = digits.evaluator.racing.stages
    assert searcher.stages == stages and searcher.survivors == (2, 1)
    assert result.evaluations == 17 and all(c.flops <= searcher.limit for c in result.candidates)
    full = [c for c in result.candidates if c.ok]
    assert result.best is not None and result.best.proxy_acc == max(c.proxy_acc for c in full)
    children = [c for c in result.candidates if "generation" in c.meta]
    assert len(children) == 16 and {c.meta["generation"] for c in children} == {1, 2}
    for generation in (1, 2):
        mine = [c for c in children if c.meta["generation"] == generation and not c.cached]
        assert sum(c.ok for c in mine) <= 1  # one child per generation is scored on every image
        assert all(c.fidelity in stages for c in mine)
    assert searcher.parent.proxy_acc == result.best.proxy_acc


@pytest.mark.parametrize(("budget", "other"), [("0.5flops", "params"), ("0.5params", "flops")])
def test_tilted_starts_keep_more_channels_where_the_budget_buys_more(digits, budget, other):
    """DigitsCNN: features.0 and features.3 run at 8x8, the others at 4x4 after the pool; a channel of
    features.0 feeds an 8x8 convolution, one of features.3 a 4x4 one. Under a FLOPs budget a channel of an
    earlier unit costs more FLOPs per parameter, so a positive tilt prunes it harder; under a params budget the
    other way round."""
    searcher = get_searcher("evolution")(digits.evaluator, Budget.parse(budget), evals=5, seed=0)
    other_cost = digits.evaluator.cost_of(other)
    shape = tilted_shape(searcher.space, searcher.cost, other_cost, 0.3)
    order = ["features.0", "features.3", "features.7"] if other == "params" else ["features.7", "features.3", "features.0"]
    assert shape[order[0]] > shape[order[1]] > shape[order[2]] >= 0.0 and min(shape.values()) == 0.0
    assert tilted_shape(searcher.space, searcher.cost, other_cost, 0.0) == {n: 0.0 for n in searcher.space.names}
    starts = [searcher.space.kept(p) for p in searcher.starts]
    uniform = searcher.space.kept(searcher.project({n: 0.0 for n in searcher.space.names}, fill=False))
    assert starts[0] == uniform and len({tuple(k.values()) for k in starts}) == len(starts) > 2
    assert all(searcher.cost(k) <= searcher.limit for k in starts)
    assert other_cost(starts[-1]) > other_cost(uniform)  # the steepest tilt keeps the most of the other resource
    result = searcher.search()  # five evaluations: the starting points, each scored on every image
    assert [c.kept for c in result.candidates] == starts[:5] and all(c.meta["start"] for c in result.candidates)
    assert searcher.parent.proxy_acc == max(c.proxy_acc for c in result.candidates)


def test_without_racing_every_child_is_scored_on_every_image():
    exp = build_experiment("digits-demo", racing="off")
    searcher = get_searcher("evolution")(exp.evaluator, Budget.parse("0.3flops"), evals=9, seed=0, offspring=4)
    result = searcher.search()
    assert not searcher.racing and searcher.stages == (len(exp.evaluator.proxy),) and searcher.survivors == ()
    assert all(c.ok for c in result.candidates) and result.evaluations == 9


def test_fresh_selection_scores_children_on_new_images_and_fully_scores_the_final_parent():
    exp = build_experiment("digits-demo", {"proxy_images": 200}, racing="on")
    searcher = get_searcher("evolution")(exp.evaluator, Budget.parse("0.4flops"), evals=14, seed=1, offspring=4,
                                         selection="fresh")
    assert len(searcher.pool) == len(exp.evaluator.proxy) + len(exp.unseen) == 359  # the whole proxy split
    result = searcher.search()
    assert result.evaluations == 14 and all(c.flops <= searcher.limit for c in result.candidates)
    *children, final = result.candidates
    assert final.ok and final.meta["final"] and final.fidelity == len(exp.evaluator.proxy) and result.best is final
    assert all(c.status == "stopped" and c.fidelity == 0 and c.proxy_acc is None for c in children)
    stages = [str(n) for n in searcher.stages]
    assert [len(c.meta["selection"]) > 0 for c in children] == [True] * len(children)
    for generation in range(2, searcher.generation + 1):  # (generation 1: the uniform start alone)
        mine = [c.meta["selection"] for c in children if c.meta["generation"] == generation]
        assert all(stages[0] in s for s in mine)  # every child sees the first slice,
        assert [sum(stage in s for s in mine) for stage in stages[1:]] == [min(len(mine), k) for k in searcher.survivors]
    # each generation draws its own images: the same child scores differently on two generations' slices
    child = searcher.evaluator.start(final.policy)
    first, second = (searcher.pool.subset(torch.from_numpy(np.random.default_rng((1, g, 1)).permutation(359)[:50]))
                     for g in (1, 2))
    assert not torch.equal(first.labels, second.labels)
    assert child.hits_on(first) is not None and len(child.hits_on(second)) == 50

    again = get_searcher("evolution")(exp.evaluator, Budget.parse("0.4flops"), evals=14, seed=1, offspring=4,
                                      selection="fresh").search()  # the same seed: the same search
    assert [c.kept for c in again.candidates] == [c.kept for c in result.candidates]
    assert [c.meta["selection"] for c in again.candidates[:-1]] == [c.meta["selection"] for c in children]


def test_fresh_selection_scores_early_stages_on_the_images_they_add_and_the_last_on_all(monkeypatch):
    exp = build_experiment("digits-demo", {"proxy_images": 200}, racing="on")
    searcher = get_searcher("evolution")(exp.evaluator, Budget.parse("0.4flops"), evals=10, seed=1, selection="fresh")
    assert searcher.stages == (50, 100, 200) and exp.evaluator.racing.batches_before_last(4) == 1
    drawn = searcher.pool.subset(torch.randperm(len(searcher.pool), generator=torch.Generator().manual_seed(0))[:200])
    policy = Policy.uniform(exp.space.names, 0.3)
    scored: list[int] = []
    correct = Proxy.correct
    monkeypatch.setattr(Proxy, "correct", lambda self, model, start=0, stop=None:
                        scored.append(len(self.labels[start:stop])) or correct(self, model, start, stop))
    scoring = exp.evaluator.start(policy)
    first = scoring.hits_on(drawn, 50, torch.zeros(0, dtype=torch.bool))
    second = scoring.hits_on(drawn, 100, first)
    assert scored == [50, 50] and len(second) == 100 and torch.equal(second[:50], first)  # nested, one recalibration
    last = scoring.hits_on(drawn, 200, second)
    assert scored[-1] == 200  # every batch now: all the images scored again
    assert torch.equal(scoring.hits_on(drawn, 200, last), last) and scored[-1] == 0  # and nothing more to recalibrate
    assert torch.equal(last, exp.evaluator.start(policy).hits_on(drawn))  # as a full evaluation's network scores them
    early = exp.evaluator.start(policy).hits_on(drawn.subset(torch.arange(100)), 100)
    assert torch.equal(second, early)  # as a network recalibrated on the early batch alone scores them


def test_fresh_selection_runs_in_one_process(fails):
    assert "--selection fresh runs in one process" in fails("search", "--budget", "0.5flops", "--method", "evolution",
                                                            "--selection", "fresh", "--workers", "2")
    assert "--selection" in fails("search", "--budget", "0.5flops", "--method", "evolution", "--selection", "best")


def test_evolution_run_records_stopped_children_as_pruned_trials(cli, tmp_path):
    code, out, err = cli("search", "--budget", "0.4flops", "--method", "evolution", "--evals", "10", "--offspring", "4",
                         "--out", "run", "--quiet")
    assert code == 0, err
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(trials) == 10 and set(trials["status"]) <= {"ok", "stopped"} and (trials["status"] == "stopped").any()
    stopped = trials[trials["status"] == "stopped"]
    assert (stopped["fidelity"] < trials["fidelity"].max()).all()
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["settings"]["racing"] == "on" and config["fidelity"]["racing"] is True
    assert config["fidelity"]["stages"][-1] == config["fidelity"]["proxy_images"]
    study = optuna.load_study(study_name=config["settings"]["env"]["name"] + "-0.4flops-evolution",
                              storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    pruned = study.get_trials(states=[optuna.trial.TrialState.PRUNED])
    assert len(pruned) == len(stopped) and all(t.intermediate_values for t in pruned)
    best = max(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]), key=lambda t: t.value)
    assert best.value == pytest.approx(trials[trials["status"] == "ok"]["proxy_acc"].max())
    assert "evolution" in out


def test_optuna_racing_prunes_trials_with_their_stages(cli, tmp_path):
    code, _, err = cli("search", "--budget", "0.3flops", "--method", "optuna", "--sampler", "cmaes", "--evals", "12",
                       "--out", "run", "--quiet")
    assert code == 0, err
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(trials) == 12 and (trials["status"] == "stopped").any()
    study = optuna.load_study(study_name="digits-demo-0.3flops-optuna", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.user_attrs["status"] == "stopped" and t.intermediate_values for t in pruned)


def test_racing_flags_are_checked(fails, cli):
    assert "--racing applies to" in fails("search", "--budget", "0.5flops", "--method", "sensitivity", "--racing", "off")
    assert "--racing" in fails("search", "--budget", "0.5flops", "--racing", "fast")
    assert "--survivors" in fails("search", "--budget", "0.5flops", "--method", "evolution", "--survivors", "1,4")
    assert "--survivors" in fails("search", "--budget", "0.5flops", "--method", "evolution", "--racing", "off",
                                  "--survivors", "2")
    assert "--offspring" in fails("search", "--budget", "0.5flops", "--method", "random", "--offspring", "4")
    assert "--tilts grid" in fails("search", "--budget", "0.5flops", "--method", "evolution", "--tilts", "0:x")
    assert "lut" in fails("search", "--budget", "0.8latency", "--method", "evolution", "--latency-model", "measure")


def test_racing_never_stops_the_eventual_best_of_a_seeded_random_search():
    """Random search proposes the same policies with racing on or off (its draws do not depend on scores), so the
    best one of the full-fidelity search must finish, and win, in the racing search too."""
    results = {}
    for racing in ("off", "on"):
        exp = build_experiment("digits-demo", racing=racing)
        results[racing] = get_searcher("random")(exp.evaluator, Budget.parse("0.3flops"), evals=30, seed=4).search()
    full, raced = results["off"], results["on"]
    assert [c.kept for c in full.candidates] == [c.kept for c in raced.candidates]
    assert any(c.stopped for c in raced.candidates)
    assert raced.best.kept == full.best.kept and raced.best.proxy_acc == full.best.proxy_acc


def test_torch_pruning_global_baseline_meets_the_budget_in_one_evaluation(digits):
    from autoprune.bench.settings import parse_method

    assert parse_method("tp-global-lamp") == ("tp-global", "lamp", None)
    budget = Budget.parse("0.5flops")
    first = get_searcher("tp-global")(digits.evaluator, budget, importance="l1").search()
    again = get_searcher("tp-global")(digits.evaluator, budget, importance="l1").search()
    assert first.evaluations == 1 and first.best is not None and first.best.kept == again.best.kept
    searcher = get_searcher("tp-global")(digits.evaluator, budget, importance="l1")
    assert first.best.flops <= searcher.limit and first.best.meta["global_ratio"] > 0
    looser = searcher.allocation(first.best.meta["global_ratio"] - 0.01)
    assert searcher.cost(looser) > searcher.limit  # bisected: a little less pruning breaks the budget
    for u in digits.space.units:
        assert first.best.kept[u.name] in u.allowed_kept
