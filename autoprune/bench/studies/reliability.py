"""The fault campaign: each fault a long search meets, provoked for real on the digits demo, and what the user sees.

Every scenario runs the ``autoprune`` command (in this process, or as a child process where a real signal
is sent), provokes one fault, and returns an :class:`Outcome`: the exit status, the line the user sees and
what is kept. ``tests/test_faults.py`` and ``tests/test_postgres.py`` assert on the same scenarios, and

    python -m autoprune.bench.studies.reliability

writes ``results/reliability.md`` from them, with the machine and library versions. The worker-killed
scenario needs PostgreSQL's server programs (:mod:`autoprune.bench.studies.postgres`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from autoprune.bench.machine import machine_header, write_markdown
from autoprune.cli import main
from autoprune.presets import load_env
from autoprune.trials.record import TrialRecorder, recorded_candidates
from autoprune.trials.study import counted, open_storage

ENV = "digits-demo"
SEARCH = ["search", "--env", ENV, "--budget", "0.5flops", "--quiet"]
STUDY = f"{ENV}-0.5flops-random"
DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@dataclass
class Outcome:
    """What one fault did: the command, its exit status, the line the user saw, and what was kept."""

    fault: str
    command: str
    code: int
    message: str
    kept: str
    details: dict[str, Any] = field(default_factory=dict)


def cli(*argv: str) -> tuple[int, str]:
    """Run ``autoprune argv`` in this process; returns the exit status and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's errors
            code = int(e.code or 0)
    return code, err.getvalue()


def last_line(text: str) -> str:
    """The last non-empty line of a command's stderr: the one that says how it ended."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def command_line(argv: list[str]) -> str:
    """``argv`` as the user types it (``autoprune ...``), temporary folders shortened to their last part."""
    return "autoprune " + shlex.join(Path(a).name if a.startswith(tempfile.gettempdir()) else a for a in argv)


def study_candidates(run: Path, study: str = STUDY) -> int:
    """How many candidates the run's study (``study.db``) records."""
    return len(recorded_candidates(optuna.load_study(study_name=study, storage=open_storage(None, run))))


def trial_rows(run: Path) -> int:
    """How many candidate rows the run's ``trials.csv`` holds."""
    return len(pd.read_csv(run / "trials.csv"))


def start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``autoprune argv`` as a child process (one torch thread), its output going to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "autoprune", *argv], cwd=cwd, env=env, stdout=f,
                                stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``deadline`` (a ``time.time()``)."""
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def rows_at_least(run: Path, n: int) -> Callable[[], bool]:
    """A condition: the run's ``trials.csv`` lists at least ``n`` candidates."""
    path = run / "trials.csv"
    return lambda: path.is_file() and len(path.read_text().splitlines()) > n


# the disk fills up


def disk_full_record(work: Path) -> Outcome:
    """ENOSPC while ``trials.csv`` is appended (the 4th candidate), then the same command with space again."""
    run = work / "run"
    argv = [*SEARCH, "--evals", "8", "--out", str(run)]
    appended = {"n": 0}
    append = TrialRecorder.__call__

    def full_at_the_fourth(self: TrialRecorder, candidate: Any) -> None:
        appended["n"] += 1
        if appended["n"] == 4:
            raise DISK_FULL
        append(self, candidate)

    with mock.patch.object(TrialRecorder, "__call__", full_at_the_fourth):
        code, err = cli(*argv)
    recorded = study_candidates(run)
    again, again_err = cli(*argv)
    rows = trial_rows(run)
    return Outcome("disk full while a candidate's row is appended to trials.csv", command_line(argv), code,
                   last_line(err), f"{recorded} candidates in the study (the 4th included: the study records first); "
                   f"the same command then resumed and finished with {rows} of 8",
                   {"recorded": recorded, "rerun_code": again, "rerun_err": again_err, "rows": rows})


def disk_full_output(work: Path) -> Outcome:
    """ENOSPC while the finished search writes ``policy.json``, then the same command with space again."""
    run = work / "run"
    argv = [*SEARCH, "--evals", "5", "--out", str(run)]
    write_text = Path.write_text

    def full_for_the_policy(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(".policy.json"):
            raise DISK_FULL
        return write_text(self, *args, **kwargs)

    with mock.patch.object(Path, "write_text", full_for_the_policy):
        code, err = cli(*argv)
    recorded = study_candidates(run)
    leftovers = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    again, again_err = cli(*argv)
    return Outcome("disk full while policy.json is written", command_line(argv), code, last_line(err),
                   f"all {recorded} candidates in the study, no half-written file; the same command then wrote the "
                   f"outputs without evaluating again", {"recorded": recorded, "leftovers": leftovers,
                                                         "rerun_code": again, "rerun_err": again_err,
                                                         "policy": (run / "policy.json").is_file()})


# files damaged before a resume


def finished_run(work: Path, template: Path | None = None) -> tuple[Path, list[str]]:
    """A finished random search of 4 candidates in ``work/run`` (a copy of ``template``, a ``work`` folder this
    function filled before, when given); returns it and its command."""
    run = work / "run"
    argv = [*SEARCH, "--evals", "4", "--out", str(run)]
    if template is not None:
        shutil.copytree(template / "run", run)
        return run, argv
    code, err = cli(*argv)
    if code != 0:
        raise AssertionError(err)
    return run, argv


TRUNCATED = "truncated"
GARBLED = "garbled"


def damage(path: Path, how: str) -> None:
    """Truncate ``path`` to half its bytes, or garble it (binary noise in the middle)."""
    data = path.read_bytes()
    half = len(data) // 2
    path.write_bytes(data[:half] if how == TRUNCATED else data[:half] + b"\x00\xff\x89garbled\x1b" * 8)


def damaged_file(work: Path, name: str, how: str, template: Path | None = None) -> Outcome:
    """``name`` of a finished run truncated or garbled, then the same search command again (a resume)."""
    run, argv = finished_run(work, template)
    damage(run / name, how)
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name in ("study.db", "config.yaml")}
    code, err = cli(*argv)
    untouched = all((run / n).read_bytes() == b for n, b in kept.items() if n != name or code == 0)
    details = {"untouched": untouched, "damaged_kept": (run / name).read_bytes() == kept.get(name), "err": err}
    if code == 0:
        details["rows"] = trial_rows(run)
        details["policy_ok"] = json.loads((run / "policy.json").read_text())["format"] == "autoprune-policy"
        what = (f"{name} was rewritten from the run's study (the record): {details['rows']} candidates, "
                f"none evaluated again")
    else:
        what = f"nothing was written: {name} and the study are left as they were for the user to restore"
    return Outcome(f"{name} {how} before a resume", command_line(argv), code, last_line(err), what, details)


def damaged_policy_used(work: Path, template: Path | None = None) -> Outcome:
    """A garbled ``policy.json`` given to the commands that read it (apply, export)."""
    run, _ = finished_run(work, template)
    damage(run / "policy.json", GARBLED)
    argv = ["export", str(run), "--format", "csv", "--out", str(work / "policy.csv")]
    code, err = cli(*argv)
    return Outcome("policy.json garbled, then exported (or applied, fine-tuned)", command_line(argv), code,
                   last_line(err), "nothing written; rerunning the search command rewrites policy.json from the study",
                   {"written": (work / "policy.csv").exists()})


# signals


def signalled(work: Path, signum: int, method: str) -> Outcome:
    """SIGTERM or SIGINT sent to a search after 5 recorded candidates, then the same command again."""
    run = work / "run"
    argv = [*SEARCH, "--method", method, "--evals", "30", "--out", str(run)]
    process = start(argv, work, work / "first.log")
    deadline = time.time() + 300
    wait_for(rows_at_least(run, 5), deadline, "5 candidates")
    process.send_signal(signum)
    code = process.wait(timeout=max(1, deadline - time.time()))
    study = STUDY.replace("random", method)
    recorded, outputs = study_candidates(run, study), (run / "policy.json").is_file()
    before = pd.read_csv(run / "trials.csv")
    kept_columns = [c for c in before.columns if c.startswith("kept:")]
    again = subprocess.run([sys.executable, "-m", "autoprune", *argv], cwd=work, capture_output=True, text=True,
                           timeout=max(1, deadline - time.time()), env={**os.environ, "OMP_NUM_THREADS": "1"},
                           check=False)
    after = pd.read_csv(run / "trials.csv")
    same = after[kept_columns].head(len(before)).equals(before[kept_columns])
    name = signal.Signals(signum).name
    return Outcome(f"{name} mid-search (--method {method})", command_line(argv), code,
                   last_line((work / "first.log").read_text()),
                   f"{recorded} recorded candidates, trials.csv, policy.json and summary.md written from them; the "
                   f"same command resumed and finished with {len(after)} of 30, the first {len(before)} unchanged",
                   {"recorded": recorded, "outputs": outputs, "rows_before": len(before), "rerun_code": again.returncode,
                    "rerun_err": again.stderr, "rows_after": len(after), "same_start": same})


# two commands on one run directory


def two_commands(work: Path) -> Outcome:
    """A second identical search started on the same ``--out`` while the first one searches."""
    run = work / "run"
    argv = [*SEARCH, "--evals", "30", "--out", str(run)]
    first = start(argv, work, work / "first.log")
    deadline = time.time() + 300
    wait_for(rows_at_least(run, 3), deadline, "the first command's candidates")
    code, err = cli(*argv)
    first_code = first.wait(timeout=max(1, deadline - time.time()))
    rows, recorded = trial_rows(run), study_candidates(run)
    return Outcome("a second command on the same --out while the first one runs", command_line(argv), code,
                   last_line(err), f"the first command went on and finished: {recorded} candidates recorded, "
                   f"{rows} rows in trials.csv", {"first_code": first_code, "rows": rows, "recorded": recorded})


# networks that fail


def failing_network(work: Path, mode: str) -> Outcome:
    """A search whose network outputs NaN (``nan``) or raises (``raise``) once its first layer keeps fewer than half
    of its 32 channels: those candidates fail, the search goes on, and the policy is a candidate that worked."""
    from autoprune.zoo.digits import DigitsCNN

    run = work / "run"
    argv = [*SEARCH, "--evals", "12", "--seed", "1", "--out", str(run)]
    forward = DigitsCNN.forward

    def broken(self: DigitsCNN, x: Any) -> Any:
        out = forward(self, x)
        if len(x) > 1 and not self.training and self.features[0].out_channels < 16:  # the dense layer has 32
            if mode == "nan":
                return out * float("nan")
            raise TypeError("this layer cannot run with so few channels")
        return out

    with mock.patch.object(DigitsCNN, "forward", broken):
        code, err = cli(*argv)
    trials = pd.read_csv(run / "trials.csv")
    failed = trials[trials["status"] == "fail"]
    policy = json.loads((run / "policy.json").read_text()) if (run / "policy.json").is_file() else {}
    first = next(iter(policy.get("channels", {}).values()), {}).get("kept", 0)
    what = "outputs NaN" if mode == "nan" else "raises"
    return Outcome(f"a candidate's network {what}", command_line(argv), code, last_line(err),
                   f"{len(failed)} of {len(trials)} candidates recorded as failed with their reason "
                   f"({failed['reason'].iloc[0].split(':')[0] if len(failed) else '-'}); the search went on and "
                   f"picked a candidate that worked (first layer keeps {first} channels)",
                   {"failed": len(failed), "rows": len(trials), "reasons": sorted(set(failed["reason"])),
                    "first_kept": first})


# crafted names


def crafted_unit_name(work: Path, template: Path | None = None) -> Outcome:
    """A policy.json whose unit names are paths (``../../escape``), exported with ``--out`` in a folder."""
    run, _ = finished_run(work, template)
    doc = json.loads((run / "policy.json").read_text())
    for key in ("channels", "ratios"):
        doc[key] = {("../../escape" if i == 0 else "/tmp/escape" if i == 1 else k): v
                    for i, (k, v) in enumerate(doc[key].items())}
    crafted = work / "crafted.json"
    crafted.write_text(json.dumps(doc))
    out = work / "exports"
    out.mkdir()
    before = _tree(work.parent)
    argv = ["export", str(crafted), "--format", "csv", "--out", str(out / "policy.csv")]
    code, err = cli(*argv)
    return Outcome("an export of a policy whose unit names are crafted paths", command_line(argv), code, last_line(err),
                   "nothing written, inside --out or outside it (unit names never make file names)",
                   {"unchanged": _tree(work.parent) == before})


def crafted_env_name(work: Path) -> Outcome:
    """An env preset file named ``../../escape``, searched without ``--out`` (the run directory is made from it)."""
    preset = work / "env.yaml"
    preset.write_text(yaml.safe_dump({**load_env(ENV).to_dict(), "name": "../../escape"}))
    before = _tree(work.parent)
    cwd = Path.cwd()
    os.chdir(work)
    try:
        argv = ["search", "--env", str(preset), "--budget", "0.5flops", "--evals", "2", "--quiet"]
        code, err = cli(*argv)
    finally:
        os.chdir(cwd)
    new = sorted(_tree(work.parent) - before)
    inside = all(p == f"{work.name}/results" or p.startswith(f"{work.name}/results/") for p in new)
    return Outcome("an env preset whose name is a path, searched without --out", command_line(argv), code,
                   last_line(err), "the run directory is made under results/runs/ with the "
                   "name's separators replaced", {"inside": inside, "new": new[:3]})


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# a worker killed on a shared PostgreSQL study


def _trials_of(study: optuna.Study, pid: int, *states: TrialState) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states)
            if str(t.user_attrs.get("worker", "")).endswith(f":{pid}")]


def _kill_mid_trial(process: subprocess.Popen, study: optuna.Study, deadline: float) -> FrozenTrial:
    """SIGKILL ``process`` while it runs a trial (frozen with SIGSTOP to look, so the trial cannot end meanwhile)."""
    while time.time() < deadline:
        os.kill(process.pid, signal.SIGSTOP)
        running = _trials_of(study, process.pid, TrialState.RUNNING)
        if running:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return running[0]
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError("the worker never ran a trial")


def _has_study(url: str, name: str) -> bool:
    try:
        optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return False
    return True


def worker_killed(work: Path, url: str, workers: int = 4, evals: int = 60) -> Outcome:
    """``workers`` machines' worth of the same command on one PostgreSQL study; one SIGKILLed mid-trial once every
    worker has finished a trial, started again once the heartbeat has failed its trial."""
    started = time.time()
    argv = [*SEARCH, "--method", "optuna", "--storage", url, "--study-name", "shared", "--evals", str(evals)]
    commands = [[*argv, "--out", str(work / f"machine{i}")] for i in range(workers)]
    processes = [start(c, work, work / f"machine{i}.log") for i, c in enumerate(commands)]
    deadline = time.time() + 600
    wait_for(lambda: _has_study(url, "shared"), deadline, "the study")
    study = optuna.load_study(study_name="shared", storage=url)
    wait_for(lambda: all(_trials_of(study, p.pid, TrialState.COMPLETE, TrialState.PRUNED) for p in processes),
             deadline, "every worker to finish a trial")  # all past their start, where a worker reaps dead ones' trials
    killed = _kill_mid_trial(processes[0], study, deadline)
    wait_for(lambda: study._storage.get_trial(killed._trial_id).state == TrialState.FAIL, deadline,
             "the heartbeat to fail the killed worker's trial")
    failed_after = time.time()
    processes[0] = start(commands[0], work, work / "machine0-again.log")  # the same command, started again
    codes = [p.wait(timeout=max(1, deadline - time.time())) for p in processes]
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if counted(t)]
    dead = study._storage.get_trial(killed._trial_id)
    redone = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]  # RetryHeartbeatStaleTrialCallback
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    best = max((t for t in complete if t.user_attrs["within_budget"]), key=lambda t: t.values[0])
    policies = [json.loads((work / f"machine{i}" / "policy.json").read_text()) for i in range(workers)]
    details = {
        "codes": codes, "counted": len(done), "complete": len(complete), "numbers": len({t.number for t in done}),
        "statuses": sorted({t.user_attrs.get("status") for t in done}), "killed": killed, "dead": dead,
        "redone": redone, "workers": len({t.user_attrs["worker"] for t in done}), "best": best,
        "complete_trials": complete, "policies": policies, "rows": [trial_rows(work / f"machine{i}") for i in range(workers)],
        "seconds": time.time() - started, "heartbeat_s": failed_after - started,
    }
    return Outcome(f"one of {workers} workers on a PostgreSQL study SIGKILLed mid-trial, then started again",
                   command_line(commands[0]).replace(url, "postgresql://USER@HOST/DB"), codes[0],
                   "(nothing: SIGKILL leaves no word; the other workers go on, and the worker started again ends "
                   "normally)",
                   f"{len(done)} of {evals} evaluations ({len(complete)} complete, the others raced out), each once; "
                   f"the killed trial {killed.number} failed by the heartbeat and redone as trial "
                   f"{redone[0].number if redone else '-'}; every worker's policy.json is the best complete trial",
                   details)


SCENARIOS: dict[str, Callable[[Path], Outcome]] = {
    "disk full (trials.csv)": disk_full_record,
    "disk full (policy.json)": disk_full_output,
    **{f"{name} {how}": (lambda work, n=name, h=how: damaged_file(work, n, h))
       for name in ("trials.csv", "study.db", "config.yaml", "policy.json") for how in (TRUNCATED, GARBLED)},
    "policy.json garbled, used": damaged_policy_used,
    "SIGTERM": lambda work: signalled(work, signal.SIGTERM, "optuna"),
    "SIGINT": lambda work: signalled(work, signal.SIGINT, "random"),
    "two commands": two_commands,
    "network outputs NaN": lambda work: failing_network(work, "nan"),
    "network raises": lambda work: failing_network(work, "raise"),
    "crafted unit name": crafted_unit_name,
    "crafted env name": crafted_env_name,
}
"""Every scenario that needs nothing but this machine, by short name."""


def campaign(postgres: bool = True) -> list[Outcome]:
    """Run every scenario (and, with ``postgres``, the killed worker on a local PostgreSQL server)."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="autoprune-faults-") as tmp:
        for i, (name, scenario) in enumerate(SCENARIOS.items()):
            work = Path(tmp) / f"case{i}"
            work.mkdir()
            print(f"{name} ...", file=sys.stderr)
            outcomes.append(_relative(scenario(work), work))
        if postgres:
            from autoprune.bench.studies.postgres import PostgresUnavailable, local_postgres

            try:
                with local_postgres() as server:
                    work = Path(tmp) / "postgres"
                    work.mkdir()
                    print("worker killed ...", file=sys.stderr)
                    outcomes.append(_relative(worker_killed(work, server.create_database("campaign")), work))
            except PostgresUnavailable as e:
                print(f"worker killed: skipped ({e})", file=sys.stderr)
    return outcomes


def _relative(outcome: Outcome, work: Path) -> Outcome:
    """The outcome with the scenario's temporary folder left out of its message."""
    outcome.message = outcome.message.replace(f"{work}/", "") or "(nothing: the command ends normally)"
    return outcome


def markdown(outcomes: list[Outcome], command: list[str]) -> list[str]:
    """The report's lines: the machine, then one row per fault."""
    lines = ["# Reliability: faults provoked on the digits demo, and what the user sees", "",
             *machine_header(command), "",
             ("Each row is one scenario of `autoprune/bench/studies/reliability.py`, run for real (a full disk is "
              "simulated by raising `OSError(ENOSPC)` in the writer); the same scenarios are asserted by "
              "`tests/test_faults.py` and `tests/test_postgres.py`. Exit status 2: a user error, 1: the disk is "
              "full, 128 + N: stopped by signal N."), "",
             "| fault | command | exit | what the user sees | what is kept |", "|---|---|---:|---|---|"]
    for o in outcomes:
        cells = [o.fault, f"`{o.command}`", str(o.code), o.message, o.kept]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return [*lines, ""]


def run(argv: list[str] | None = None) -> Path:
    """The command: run the campaign and write ``reliability.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="folder of reliability.md (default results)")
    parser.add_argument("--no-postgres", action="store_true", help="leave out the killed worker on PostgreSQL")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    outcomes = campaign(postgres=not args.no_postgres)
    command = ["python", "-m", "autoprune.bench.studies.reliability", *(argv if argv is not None else sys.argv[1:])]
    return write_markdown(args.out, "reliability.md", markdown(outcomes, command), echo=False)


if __name__ == "__main__":
    run()
