"""Every method that can run in parallel runs on many workers through one shared study (a journal file here; the
PostgreSQL runs are in tests/test_postgres.py): random search and evolution with an exact global evaluation count,
a worker killed mid-generation replaced, the sensitivity scan's grid and a benchmark's cells each done once."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from autoprune.errors import BudgetError
from autoprune.presets import load_env
from autoprune.run.search import SearchSettings, run_search
from autoprune.trials.record import HITS_ATTR, decode_hits
from autoprune.trials.study import (
    TASK_ATTR,
    ahead_of,
    claim,
    counted,
    drop,
    enqueue_tasks,
    open_storage,
    reap_dead_trials,
)

SEARCH = ["search", "--env", "digits-demo", "--budget", "0.5flops", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _trials(storage: Path | str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(str(storage))).get_trials()


def _pid(trial: optuna.trial.FrozenTrial) -> int:
    """The process id of the worker that ran ``trial``."""
    return int(trial.user_attrs["worker"].rpartition(":")[2])


def test_random_search_on_three_workers_counts_every_evaluation_once(cli, tmp_path):
    (tmp_path / "runs").mkdir()
    code, out, err = cli(*SEARCH, "--method", "random", "--evals", "9", "--workers", "3", "--storage", "runs/x.log",
                         "--out", "run")
    assert code == 0, err
    trials = _trials(tmp_path / "runs" / "x.log", "digits-demo-0.5flops-random")
    done = [t for t in trials if counted(t)]
    assert len(done) == 9 and "9 evaluations recorded" in out
    samples = {tuple(sorted(t.user_attrs["sample"].items())) for t in done}
    assert len(samples) == 9  # each trial drew its own sample: no two workers evaluated the same draw
    assert {t.user_attrs["status"] for t in done} <= {"ok", "stopped"} and any(t.state == TrialState.PRUNED for t in done)
    for t in done:  # a finished candidate carries its per-image hits: the other workers race against it from them
        if t.state == TrialState.COMPLETE:
            hits = decode_hits(t.user_attrs[HITS_ATTR], t.user_attrs["fidelity"])
            assert hits.float().mean().item() == pytest.approx(t.user_attrs["proxy_acc"])
    rows = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(rows) == 9
    best = max(t.user_attrs["proxy_acc"] for t in done if t.state == TrialState.COMPLETE)
    assert json.loads((tmp_path / "run" / "policy.json").read_text())["metrics"]["proxy_acc"] == best


CLAIMER = """
import sys, time
from pathlib import Path
import optuna
from autoprune.trials.study import claim, done_tasks, drop, enqueue_tasks, open_storage, waiting_params
journal, go, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
study = optuna.load_study(study_name="tasks", storage=open_storage(journal))
while not go.exists():
    time.sleep(0.005)
enqueue_tasks(study, {f"t{i}": ({"x": float(i)}, {}) for i in range(n)})  # every worker enqueues the same tasks
def work(trial):
    if waiting_params(trial) is None:
        drop(trial, "nothing waiting")
    time.sleep(0.05)
    return trial.suggest_float("x", 0.0, 100.0)  # the enqueued value
while len(done_tasks(study.get_trials(deepcopy=False))) < n:
    claim(study, work)
"""


def test_workers_racing_for_the_same_tasks_evaluate_each_once(tmp_path):
    """Three processes released at the same moment each enqueue the same 12 tasks and claim until all are done:
    every task is evaluated exactly once, and more than one worker did the work."""
    journal, go = tmp_path / "tasks.log", tmp_path / "go"
    optuna.create_study(study_name="tasks", storage=open_storage(str(journal)))
    workers = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(journal), str(go), "12"], env=ENV,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(3)  # every worker has imported and waits for the signal
    go.touch()
    results = [(w.wait(timeout=120), w.stderr.read()) for w in workers]
    assert all(status == 0 for status, _ in results), results
    trials = _trials(journal, "tasks")
    done = [t for t in trials if counted(t)]
    assert sorted(t.user_attrs[TASK_ATTR] for t in done) == sorted(f"t{i}" for i in range(12))
    assert all(t.params["x"] == float(t.user_attrs[TASK_ATTR][1:]) for t in done)  # each ran its own task
    assert len({t.user_attrs["worker"] for t in done}) >= 2
    # every other trial is a copy or an empty claim that was dropped with its reason, or a copy still waiting
    # (enqueued by a worker that read the study before the others' tasks were visible, after the work was done)
    assert all(t.state == TrialState.WAITING or t.user_attrs.get("reason") for t in trials if not counted(t))


def test_bad_input_on_several_workers_stops_the_workers_started_early_and_writes_nothing(tmp_path):
    """The worker processes start before the command checks its input (their start overlaps its setup): an
    impossible budget still ends in the one-line error, with every worker gone and no run directory."""
    settings = SearchSettings(env=load_env("digits-demo").to_dict(), budget="0.001flops", method="random", evals=4,
                              workers=3)
    with pytest.raises(BudgetError, match="cannot be met"):
        run_search(settings, str(tmp_path / "run"), progress=False)
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "run").exists()


def test_a_claim_that_finds_no_task_waiting_drops_the_new_trial(tmp_path):
    """Another worker can pop the last waiting task between a worker's look at the study and its claim: Optuna then
    hands out a new trial without a task, which a task-only claim drops (uncounted, with its reason) instead of
    working on it."""
    study = optuna.create_study(study_name="race", storage=open_storage(str(tmp_path / "race.log")))
    enqueue_tasks(study, {"only": ({}, {})})
    worked: list[str | None] = []

    def work(trial: optuna.Trial) -> float:
        worked.append(trial.user_attrs.get(TASK_ATTR))
        return 1.0

    claim(study, work, tasks_only=True)  # takes the waiting task
    claim(study, work, tasks_only=True)  # nothing waits any more: a new trial, dropped
    first, second = study.get_trials(deepcopy=False)
    assert worked == ["only"]
    assert counted(first) and first.user_attrs[TASK_ATTR] == "only"
    assert second.state == TrialState.FAIL and not counted(second) and TASK_ATTR not in second.user_attrs
    assert second.user_attrs["reason"] == "no task was waiting (another worker took the last one)"


def test_a_dropped_trials_task_is_enqueued_again(tmp_path):
    """A task whose only trial was dropped (failed, uncounted: e.g. a speculative child given up while a retry of the
    generation before waited) is free: enqueueing it again makes a new waiting trial. Held as before, its generation
    never completed (a hang seen in the killed-worker test)."""
    study = optuna.create_study(study_name="free", storage=open_storage(str(tmp_path / "free.log")))
    enqueue_tasks(study, {"child": ({}, {})})

    def give_up(trial: optuna.Trial) -> float:
        drop(trial, "given up")
        return 0.0

    claim(study, give_up)
    assert enqueue_tasks(study, {"child": ({}, {})}) == 1
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.FAIL, TrialState.WAITING]
    claim(study, lambda trial: 1.0)
    assert enqueue_tasks(study, {"child": ({}, {})}) == 0  # held by its counted trial now


def test_a_new_trial_counts_a_lower_waiting_one_ahead_of_it(tmp_path):
    """A dead worker's trial enqueued again is numbered when enqueued; a worker that found nothing waiting an instant
    before creates the next trial. With one evaluation left, exactly one of the two must run: the new trial counts
    the waiting one ahead of it (and drops), the retry does not count the new one (and runs). Left out, the waiting
    trial let both run (seen once on PostgreSQL: 61 candidates of 60)."""
    storage = open_storage(str(tmp_path / "race.log"))
    study = optuna.create_study(study_name="race", storage=storage)
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    study.enqueue_trial({}, user_attrs={TASK_ATTR: "retry 9"})  # number 2, waiting
    storage.create_new_trial(study._study_id)  # number 3, running: created by a worker that saw nothing waiting
    assert ahead_of(study.get_trials(deepcopy=False), 3) == 3  # with 3 evaluations asked: dropped
    retry = study.ask()  # another worker pops the waiting one
    trials = study.get_trials(deepcopy=False)
    assert retry.number == 2 and trials[2].state == TrialState.RUNNING
    assert ahead_of(trials, 2) == 2  # the new trial above it is not ahead: the retry runs, the study holds 3


def test_a_run_reaps_every_trial_its_killed_command_left_running(tmp_path):
    """A command killed while the sampler proposed a trial leaves it running with no worker and no heartbeat: only
    the run's own command, holding its study alone, can settle it (``every``); a trial with its parameters or task
    is enqueued again, one with nothing begun is only failed."""
    storage = open_storage(str(tmp_path / "study.log"))
    study = optuna.create_study(study_name="run", storage=storage)
    orphan = storage.create_new_trial(study._study_id)  # running: killed while sampling
    enqueue_tasks(study, {"child": ({"x": 0.5}, {})})
    study.ask()  # popped by a command killed before it recorded its worker: running, with its fixed parameters
    alive = study.ask()
    alive.suggest_float("x", 0.0, 1.0)
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # a live worker of this host
    assert reap_dead_trials(study, storage) == 0  # none of them is a dead worker's
    assert reap_dead_trials(study, storage, every=True) == 3
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:3]] == [TrialState.FAIL] * 3
    assert trials[orphan].user_attrs["reason"] == "its command was killed before the trial recorded its worker"
    retried = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retried) == 2 and {t.user_attrs[TASK_ATTR] for t in retried} == {"child", "retry 2"}
    assert next(t for t in retried if t.user_attrs[TASK_ATTR] == "child").system_attrs["fixed_params"] == {"x": 0.5}


def test_evolution_on_three_workers_with_one_killed_mid_generation(tmp_path):
    """Generations are tasks of the study: every child is evaluated once, by whichever worker is free; a worker
    SIGKILLed while it evaluates a child is replaced, and its child is evaluated again, so the generation completes."""
    check_evolution_with_a_worker_killed(str(tmp_path / "e.log"), tmp_path)


def check_evolution_with_a_worker_killed(storage: str, tmp_path: Path) -> None:
    """Evolution (100 children, generations of 4) on three workers sharing ``storage``; one worker is SIGKILLed while
    it holds a child of generation 1 or later. Checks that the study records each child once and the run completes."""
    loud = [a for a in SEARCH if a != "--quiet"]  # the supervisor's status lines say when it replaces a worker
    command = [sys.executable, "-m", "autoprune", *loud, "--method", "evolution", "--offspring", "4", "--evals", "100",
               "--workers", "3", "--storage", storage, "--out", str(tmp_path / "run")]
    process = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    study = "digits-demo-0.5flops-evolution"
    killed = None
    deadline = time.time() + 120
    while killed is None and process.poll() is None and time.time() < deadline:
        if "://" not in storage and not Path(storage).is_file():  # a journal file the command has not made yet
            time.sleep(0.02)
            continue
        try:
            running = [t for t in _trials(storage, study)
                       if t.state == TrialState.RUNNING and t.user_attrs.get("generation", 0) >= 1
                       and "worker" in t.user_attrs and _pid(t) != process.pid]  # not worker 0, the command
        except KeyError:  # the study is not created yet
            running = []
        if running:
            killed = running[0]
            os.kill(_pid(killed), signal.SIGKILL)
        time.sleep(0.02)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert killed is not None, "no child was caught running"
    trials = _trials(storage, study)
    done = [t for t in trials if counted(t)]
    assert len(done) == 100  # exactly the evaluations asked for: 5 starts (the tilts), 23 generations of 4, one of 3
    tasks = [t.user_attrs[TASK_ATTR] for t in done]
    assert len(set(tasks)) == 100  # no child evaluated twice
    generations = pd.Series([t.user_attrs["generation"] for t in done]).value_counts().sort_index().tolist()
    assert generations == [5] + [4] * 23 + [3]
    assert any(_pid(t) == process.pid for t in done)  # the command itself is worker 0
    dead = next(t for t in trials if t.number == killed.number)
    if dead.state == TrialState.FAIL:  # killed mid-trial (not just after it): failed, its child evaluated again
        assert not counted(dead)
        parents = {t.user_attrs["parent"] for t in done if t.user_attrs["generation"] == dead.user_attrs["generation"]}
        # its child is evaluated again, unless it was built speculatively from a parent that was then replaced
        assert dead.user_attrs[TASK_ATTR] in tasks or parents != {dead.user_attrs["parent"]}
    # the killed worker was replaced (whether the replacement still finds a child to claim depends on timing)
    assert re.search(r"worker \d was killed by SIGKILL; starting another", err), err
    assert len(pd.read_csv(tmp_path / "run" / "trials.csv")) == 100


@pytest.mark.slow
def test_evolution_on_three_workers_records_the_search_one_worker_makes(cli, tmp_path):
    """Workers that would idle at a generation's end score the next one speculatively; only children whose parent
    held are recorded, so three workers record the very children (task, parent, layout) that one worker does."""
    recorded = []
    for workers in (1, 3):
        code, _, err = cli(*SEARCH, "--method", "evolution", "--offspring", "4", "--evals", "61", "--racing", "off",
                           "--workers", str(workers), "--storage", f"w{workers}.log", "--out", f"run{workers}")
        assert code == 0, err
        trials = _trials(tmp_path / f"w{workers}.log", "digits-demo-0.5flops-evolution")
        done = [t for t in trials if counted(t)]
        assert len(done) == 61 and len(pd.read_csv(tmp_path / f"run{workers}" / "trials.csv")) == 61
        recorded.append({t.user_attrs[TASK_ATTR]: (t.user_attrs["kept"], t.user_attrs["proxy_acc"]) for t in done})
        dropped = [t for t in trials if t.state == TrialState.FAIL and "was replaced by" in t.user_attrs.get("reason", "")]
        assert all(t.user_attrs[TASK_ATTR] not in recorded[-1] for t in dropped)
        joined = {t.user_attrs.get("worker") for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        if len(joined) > 1:  # workers join after their setup (~5 s idle; a loaded machine may finish before they do)
            assert dropped or any(t.user_attrs.get("speculative") for t in done)  # then some idle at generations' ends
    assert recorded[0] == recorded[1]


def test_a_method_that_cannot_run_in_parallel_says_so(fails):
    line = fails(*SEARCH, "--method", "netadapt", "--workers", "2")
    assert line == ("autoprune: error: --method netadapt runs in one process, not on --workers 2; methods that run on "
                    "several workers: random, optuna, evolution")


@pytest.mark.slow
def test_two_commands_fill_the_sensitivity_grid_once(tmp_path):
    journal = tmp_path / "scan.log"
    command = [sys.executable, "-m", "autoprune", "sensitivity", "--env", "digits-demo", "--ratios", "0.25,0.5,0.75",
               "--storage", str(journal), "--quiet"]
    cache = {**ENV, "AUTOPRUNE_CACHE_DIR": str(tmp_path / "cache")}
    processes = [subprocess.Popen([*command, "--out", f"out{i}"], cwd=tmp_path, env=cache, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
    assert [p.wait(timeout=180) for p in processes] == [0, 0], [p.stderr.read() for p in processes]
    study = optuna.load_study(study_name=None, storage=open_storage(str(journal)))
    done = [t for t in study.get_trials() if counted(t)]
    tables = [pd.read_csv(tmp_path / f"out{i}" / "sensitivity.csv") for i in range(2)]
    units = tables[0]["unit"].nunique()
    assert len(done) == 1 + 3 * units == len({t.user_attrs[TASK_ATTR] for t in done})  # each point scored once
    pd.testing.assert_frame_equal(tables[0], tables[1])  # both read the whole grid
    assert len(list((tmp_path / "cache" / "sensitivity").glob("*.csv"))) == 1


@pytest.mark.slow
def test_two_bench_processes_on_one_storage_run_each_cell_once(tmp_path):
    command = [sys.executable, "-m", "autoprune", "bench", "--env", "digits-demo", "--budgets", "0.5",
               "--methods", "uniform,random,evolution", "--seeds", "2", "--evals", "3", "--no-latency",
               "--finetune-epochs", "0", "--storage", str(tmp_path / "bench.log"), "--quiet"]
    processes = [subprocess.Popen([*command, "--out", f"m{i}"], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
    assert [p.wait(timeout=300) for p in processes] == [0, 0], [p.stderr.read() for p in processes]
    study = optuna.load_study(study_name="bench-digits-demo", storage=open_storage(str(tmp_path / "bench.log")))
    done = [t for t in study.get_trials() if counted(t)]
    assert sorted(t.user_attrs[TASK_ATTR] for t in done) == sorted(
        f"0.5flops {m} seed {s}" for m, s in [("uniform", 0), ("random", 0), ("random", 1), ("evolution", 0),
                                              ("evolution", 1)])  # 5 cells, each run once
    ran = [len(list((tmp_path / f"m{i}" / "cells").rglob("*-s*.json"))) for i in range(2)]
    assert sum(ran) == 5
    # the process that finished the last cell reads the study after it, so its report holds both machines' cells (the
    # other one may have read the study earlier; which csv was written last says nothing on a loaded machine)
    rows = [len(pd.read_csv(tmp_path / f"m{i}" / "digits-demo.csv")) for i in range(2)]
    assert max(rows) == 5
