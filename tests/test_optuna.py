"""Optuna search and the run's study: samplers, records, dashboard, workers, kill and resume, pick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pandas as pd
import pytest

from autoprune.core.budget import Budget
from autoprune.core.policy import PolicyRecord
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.run.directory import pareto_front
from autoprune.search import SAMPLERS, OptunaSearcher, get_searcher
from autoprune.trials.study import counted, open_storage


@pytest.fixture(scope="module")
def digits() -> Experiment:
    return Experiment.from_config(load_env("digits-demo"))


def _study(run: Path, name: str = "digits-demo-0.5flops-optuna") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(None, run))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_meets_budget_and_records_raw_and_projected(digits, sampler):
    searcher = OptunaSearcher(digits.evaluator, Budget.parse("0.5flops"), evals=8, seed=0, sampler=sampler)
    result = searcher.search()
    trials = searcher.study.get_trials()
    assert sum(counted(t) for t in trials) == 8
    first = trials[0]
    assert first.user_attrs["method"] == "optuna"
    fractions = [k / digits.space.unit(n).channels for n, k in first.user_attrs["kept"].items()]
    assert max(fractions) - min(fractions) < 0.05  # warm start: the uniform policy comes first
    for t in trials:
        assert set(t.user_attrs["sample"]) == set(digits.space.names)  # the raw sample ...
        assert t.user_attrs["flops"] <= 0.5 * digits.evaluator.cost.dense_flops  # ... projected onto the budget
    assert result.best.flops <= 0.5 * digits.evaluator.cost.dense_flops


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_tilts_enqueue_evolutions_starting_points_first(digits, sampler):
    budget = Budget.parse("0.5flops")
    starts = get_searcher("evolution")(digits.evaluator, budget, evals=5, seed=0).starts
    assert len(starts) > 2
    searcher = OptunaSearcher(digits.evaluator, budget, evals=len(starts) + 3, seed=0, sampler=sampler,
                              tilts="0:0.4:0.1")
    result = searcher.search()
    kept = [c.kept for c in result.candidates]
    # the tilted starts are evaluated as enqueued; the uniform one (unfilled, as the uniform baseline makes it) is
    # filled with the budget's leftover by the projection every Optuna sample goes through, as before --tilts
    assert kept[1:len(starts)] == [digits.space.kept(p) for p in starts[1:]]
    assert all(kept[0][n] >= k for n, k in digits.space.kept(starts[0]).items())
    assert all(c.flops <= searcher.limit for c in result.candidates) and result.evaluations == len(starts) + 3
    plain = OptunaSearcher(digits.evaluator, budget, evals=1, seed=0, sampler=sampler).search()
    assert [c.kept for c in plain.candidates] == kept[:1]  # by default the uniform policy alone


def test_cmaes_with_two_objectives_and_unknown_sampler_are_errors(digits):
    from autoprune.errors import ConfigError

    with pytest.raises(ConfigError, match="cmaes"):
        OptunaSearcher(digits.evaluator, Budget.parse("0.5flops"), sampler="cmaes", objectives=("acc", "flops"))
    with pytest.raises(ConfigError, match="unknown sampler 'bogus'"):
        OptunaSearcher(digits.evaluator, Budget.parse("0.5flops"), sampler="bogus")


def test_random_search_run_is_a_study_and_dashboard_serves_it(cli, tmp_path):
    code, _, err = cli("search", "--budget", "0.5flops", "--evals", "5", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    trials = _study(tmp_path / "run", "digits-demo-0.5flops-random").get_trials()
    assert len(trials) == 5 and all(t.user_attrs["method"] == "random" for t in trials)

    from optuna_dashboard import wsgi

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = make_server("127.0.0.1", 0, wsgi(f"sqlite:///{tmp_path / 'run' / 'study.db'}"), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=30))["study_summaries"]
        study_id = studies[0]["study_id"]
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=30))
    finally:
        server.shutdown()
    assert len(detail["trials"]) == 5
    trial = detail["trials"][0]
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert {"flops", "params", "proxy_acc", "kept", "ratios", "method"} <= set(attrs)
    assert {p["name"] for p in trial["params"]} == set(json.loads(attrs["ratios"].replace("'", '"')))


def test_three_workers_share_one_journal_study(cli, tmp_path):
    journal = tmp_path / "study.log"
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "optuna", "--evals", "12", "--workers", "3",
                       "--storage", str(journal), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    study = optuna.load_study(study_name="digits-demo-0.5flops-optuna", storage=open_storage(str(journal)))
    done = [t for t in study.get_trials() if counted(t)]
    assert len(done) == 12
    assert len({t.number for t in done}) == 12
    assert all(t.user_attrs["worker"] for t in done)  # (how many workers took part depends on how fast they start;
    # the sharing itself: tests/test_workers.py::test_workers_racing_for_the_same_tasks_evaluate_each_once)
    rows = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(rows) == 12
    assert PolicyRecord.load(tmp_path / "run" / "policy.json").metrics["flops"] <= 0.5 * 2.69e6


def test_sigkill_mid_run_then_rerun_keeps_trials_and_finishes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "autoprune", "search", "--budget", "0.5flops", "--method", "optuna",
               "--evals", "60", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "trials.csv").is_file() and len((out / "trials.csv").read_text().splitlines()) > 8:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {t.number: t.params for t in _study(out).get_trials() if counted(t)}  # finished or stopped by racing
    assert 5 <= len(before) < 60

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = _study(out).get_trials()
    assert sum(counted(t) for t in after) == 60
    kept = {t.number: t.params for t in after if counted(t)}
    assert all(kept[n] == p for n, p in before.items())  # every recorded trial is still there
    assert PolicyRecord.load(out / "policy.json").found_by["evaluations"] >= 60


def test_two_objectives_pareto_and_pick(cli, tmp_path):
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "optuna", "--sampler", "nsga2",
                       "--objectives", "acc,flops", "--evals", "16", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    front = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert (tmp_path / "run" / "pareto.png").is_file()
    assert front["flops"].is_monotonic_increasing and front["proxy_acc"].is_monotonic_increasing
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(front) == len(pareto_front(trials))
    code, out, err = cli("pick", str(tmp_path / "run"), "--budget", "0.7flops")
    assert code == 0, err
    picked = PolicyRecord.load(tmp_path / "run" / "pick-0.7flops" / "policy.json")
    ok = trials[(trials["status"] == "ok") & (trials["flops"] <= 0.7 * 2.69e6)]
    assert picked.metrics["flops"] <= 0.7 * 2.69e6 + 1
    assert picked.metrics["proxy_acc"] == pytest.approx(ok["proxy_acc"].max())


def test_pick_and_storage_errors(cli, tmp_path):
    code, _, err = cli("search", "--budget", "0.5flops", "--evals", "3", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    code, _, err = cli("pick", str(tmp_path / "run"), "--budget", "0.2flops")
    assert code == 2 and "no recorded candidate meets budget" in err
    assert len([line for line in err.splitlines() if not line.endswith(" ...")]) == 1  # after the stage lines
    assert not (tmp_path / "run" / "pick-0.2flops").exists()
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "optuna", "--storage",
                       "postgresql://nobody@127.0.0.1:1/none", "--out", str(tmp_path / "x"), "--quiet")
    assert code == 2 and "cannot be opened or reached" in err and not (tmp_path / "x").exists()
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "optuna", "--sampler", "bogus", "--quiet")
    assert code == 2 and "unknown sampler" in err
