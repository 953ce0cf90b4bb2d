"""Many machines on one real PostgreSQL server (started on 127.0.0.1 for this module): four workers of the same
command, one killed mid-trial and started again; two studies in one database; the report of a shared study."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from autoprune.bench.studies.postgres import PostgresUnavailable, local_postgres
from autoprune.bench.studies.reliability import worker_killed
from autoprune.trials.study import counted
from tests.test_workers import check_evolution_with_a_worker_killed

pytestmark = pytest.mark.slow
CI_VARIABLE = "AUTOPRUNE_CI"  # set by .ci/run: there a server that cannot start is a failure, not a skip
SEARCH = ["search", "--env", "digits-demo", "--budget", "0.5flops", "--method", "optuna", "--quiet"]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own; skipped with the reason outside CI when none can be started."""
    try:
        with local_postgres() as server:
            yield server
    except PostgresUnavailable as e:
        if os.environ.get(CI_VARIABLE):
            pytest.fail(f"CI needs a PostgreSQL server: {e}")
        pytest.skip(f"no PostgreSQL server can be started here: {e}")


def test_four_workers_one_killed_mid_trial_and_restarted(postgres, tmp_path, cli):
    outcome = worker_killed(tmp_path, postgres.create_database("killed"))
    d = outcome.details
    assert d["codes"] == [0, 0, 0, 0]  # the restarted worker and the three others
    assert d["counted"] == 60 and d["numbers"] == 60  # exactly the evaluations asked for: none lost, none twice
    assert set(d["statuses"]) <= {"ok", "stopped"}  # scored on every proxy image, or raced out
    killed, dead, redone = d["killed"], d["dead"], d["redone"]
    assert dead.state == TrialState.FAIL and not counted(dead)  # failed, never counted
    assert "reason" not in dead.user_attrs  # by the heartbeat (the restarted worker would have written its reason)
    assert len(redone) == 1 and counted(redone[0])  # its evaluation redone, once, with the parameters it had sampled
    assert dead.params.items() <= redone[0].params.items() and killed.params.items() <= dead.params.items()
    assert d["workers"] >= 3  # the work was shared
    best = d["best"].values[0]
    tied = [t.user_attrs["kept"] for t in d["complete_trials"] if t.user_attrs["within_budget"] and t.values[0] == best]
    for policy in d["policies"]:  # every machine's policy.json is the best complete trial (or one as good)
        assert policy["metrics"]["proxy_acc"] == pytest.approx(best)
        assert {n: c["kept"] for n, c in policy["channels"].items()} in tied
    assert d["rows"] == [60] * 4

    code, out, err = cli("report", "--storage", postgres.url("killed"), "--study-name", "shared", "--out", "report")
    assert code == 0, err
    report = tmp_path / "report"
    assert {"config.yaml", "policy.json", "trials.csv", "summary.md", "trials.png", "policy.png"} <= \
        {p.name for p in report.iterdir()}
    assert json.loads((report / "policy.json").read_text())["channels"] == d["policies"][1]["channels"]
    assert len(pd.read_csv(report / "trials.csv")) == 60 and "60 evaluations recorded" in out
    assert cli("pick", "report", "--budget", "0.7flops")[0] == 0  # the report is a run directory like any other
    print(f"\n{outcome.kept}; {d['seconds']:.0f} s ({d['heartbeat_s']:.0f} s until the heartbeat failed the trial)")


def test_two_studies_in_one_database_do_not_see_each_other(postgres, cli, tmp_path):
    url = postgres.create_database("two")
    assert cli(*SEARCH, "--storage", url, "--study-name", "a", "--evals", "4", "--out", "a")[0] == 0
    assert cli(*SEARCH, "--storage", url, "--study-name", "b", "--evals", "6", "--out", "b")[0] == 0
    a, b = (optuna.load_study(study_name=n, storage=url) for n in "ab")
    assert len(a.get_trials()) == 4 and len(b.get_trials()) == 6
    assert {t._trial_id for t in a.get_trials()}.isdisjoint(t._trial_id for t in b.get_trials())
    code, _, err = cli(*SEARCH, "--storage", url, "--study-name", "a", "--evals", "9", "--out", "a2")
    assert code == 2 and "study 'a' was started with other settings (evals)" in err and not (tmp_path / "a2").exists()
    code, _, err = cli("report", "--storage", url, "--study-name", "c", "--out", "c")
    assert code == 2 and "holds no study 'c' (it holds: a, b)" in err


def test_workers_starting_at_once_on_a_new_database_all_open_it(postgres):
    url = postgres.create_database("fresh")  # no tables yet: every worker creates them at the same moment
    code = "import sys; from autoprune.trials.study import open_storage, open_study; open_study(open_storage(sys.argv[1]), 'x')"
    workers = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(w.wait(timeout=120), w.stderr.read()) for w in workers]
    assert all(status == 0 for status, _ in results), results


@pytest.mark.parametrize("method, options", [("random", []), ("evolution", ["--offspring", "4"])])
def test_random_and_evolution_on_three_workers_count_every_evaluation_once(postgres, cli, tmp_path, method, options):
    url = postgres.create_database(f"workers_{method}")
    code, out, err = cli("search", "--env", "digits-demo", "--budget", "0.5flops", "--method", method, *options,
                         "--evals", "13", "--workers", "3", "--storage", url, "--out", "run", "--quiet")
    assert code == 0, err
    trials = optuna.load_study(study_name=f"digits-demo-0.5flops-{method}", storage=url).get_trials()
    done = [t for t in trials if counted(t)]
    assert len(done) == 13 and "13 evaluations recorded" in out
    if method == "random":  # each trial its own draw
        assert len({tuple(sorted(t.user_attrs["sample"].items())) for t in done}) == 13
    else:  # each child once: the 5 starts (the tilts), then generations of 4
        assert len({t.user_attrs["task"] for t in done}) == 13
        assert sorted(t.user_attrs["generation"] for t in done) == [0] * 5 + [1] * 4 + [2] * 4
    assert len(pd.read_csv(tmp_path / "run" / "trials.csv")) == 13


def test_evolution_on_three_workers_with_one_killed_mid_generation(postgres, tmp_path):
    """As on a journal file (tests/test_workers.py): here the killed worker's trial is failed by the heartbeat (or
    reaped by a worker of this host) and its child evaluated again, or dropped if it was a speculative child whose
    parent was beaten."""
    check_evolution_with_a_worker_killed(postgres.create_database("evolution_killed"), tmp_path)
