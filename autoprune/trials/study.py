"""The run's Optuna study: every candidate of every searcher is a trial in it.

Each trial holds the unit ratios as parameters and, as user attributes, the kept channels, FLOPs
(MACs), params, latency, proxy accuracy, method and budget status, so that
``optuna-dashboard sqlite:///<run>/study.db`` inspects any search. Optuna's storage is also the
engine for many workers: an RDB URL (SQLite, PostgreSQL, MySQL) or a journal file.

Work known ahead (an evolutionary generation's children, the sensitivity scan's grid, a benchmark's cells)
is shared through the study as *tasks*: waiting trials named by a ``task`` user attribute, enqueued by
:func:`enqueue_tasks` and taken by :func:`claim` (Optuna pops a waiting trial atomically). Any worker may
enqueue the same tasks (they are a deterministic function of what the study holds); when two did, the
lowest-numbered trial of a task that has not died owns it and a later copy is dropped when claimed
(:func:`owner_before`). A worker killed while holding a trial leaves it running: :func:`reap_dead_trials`
(workers of this host) or an RDB storage's heartbeat fails it and enqueues it again, task included.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from autoprune.core.evaluator import Candidate
from autoprune.core.metrics import METRICS
from autoprune.core.space import SearchSpace
from autoprune.errors import ConfigError

STUDY_FILE = "study.db"
HEARTBEAT_S = 10
SCHEMA_RETRIES = 5
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
SETTINGS_ATTR = "autoprune_settings"
TASK_ATTR = "task"
"""User attribute naming the piece of work a trial does; the lowest-numbered live trial of a task owns it."""
MACHINE_SETTINGS = ("storage", "workers", "device", "threads", "data_dir", "download", "trust_checkpoint")
"""Run settings that may differ between the machines sharing a study (where things are, how to run)."""


def parse_objectives(text: str) -> tuple[str, ...]:
    """``acc`` or ``acc,flops`` / ``acc,latency`` / ``acc,params`` (any registered budget metric) -> a tuple of
    objective names.

    Raises:
        ConfigError: for an unknown objective or one not starting with ``acc``.
    """
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n != "acc" and n not in METRICS]
    if unknown or not names or names[0] != "acc" or len(set(names)) != len(names) or len(names) > 2:
        raise ConfigError(f"objectives must be 'acc' or 'acc,<{'|'.join(METRICS)}>', got {text!r}")
    return names


def open_storage(url: str | None, run_dir: Path | None = None) -> optuna.storages.BaseStorage:
    """The storage for ``url``, or a SQLite ``study.db`` in ``run_dir`` when no URL is given.

    RDB storages get Optuna's heartbeat: a trial whose worker was killed is failed after a grace
    period and retried with the same parameters. A path ending in ``.log``/``.journal``/``.jsonl`` (or
    a ``journal:PATH`` URL) is an Optuna journal file.

    Raises:
        ConfigError: if the storage cannot be opened or reached.
    """
    local = url is None
    if url is None:
        if run_dir is None:
            raise ConfigError("a study needs a storage URL or a run directory")
        url = f"sqlite:///{Path(run_dir).resolve() / STUDY_FILE}"
    try:
        if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.removeprefix("journal:")).expanduser()
            if not path.parent.is_dir():
                raise ConfigError(f"folder of journal storage {str(path)!r} does not exist")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _rdb_storage(url)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (SQLAlchemy and drivers raise many types for unreachable or bad URLs)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if local:
            raise ConfigError(f"the run's study {str(Path(run_dir) / STUDY_FILE)!r} cannot be read ({type(e).__name__}: "
                              f"{first[:120]}); it is the run's record: restore it from a copy, or start again with "
                              f"another --out") from None
        raise ConfigError(f"storage {url!r} cannot be opened or reached ({type(e).__name__}: {first[:200]})") from None


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with the heartbeat; retried while other workers create the same new database's tables
    (their ``CREATE TABLE`` statements collide when several machines start on a new database at once)."""
    import sqlalchemy.exc

    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=3 * HEARTBEAT_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            attempt += 1
            if attempt > SCHEMA_RETRIES:
                raise
            time.sleep(0.5 + random.random() * attempt)


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    objectives: Sequence[str] = ("acc",),
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create the study, or load it when it exists with the same objectives.

    Raises:
        ConfigError: if an existing study of that name has other objectives.
    """
    directions = ["maximize" if o == "acc" else "minimize" for o in objectives]  # accuracy up, every cost down
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(f"study {name!r} exists with directions {have}, not {directions} ({','.join(objectives)}); "
                          f"choose another --study-name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([{"acc": "proxy_acc", "flops": "flops_macs"}.get(o, o) for o in objectives])
    return study


def unit_distributions(space: SearchSpace) -> dict[str, FloatDistribution]:
    """One float parameter per unit: its ratio within the unit's bounds."""
    return {u.name: FloatDistribution(u.min_ratio, u.max_ratio) for u in space.units}


def objective_values(candidate: Candidate, objectives: Sequence[str]) -> list[float]:
    """The candidate's values for the study's objectives (accuracy first)."""
    return [float(candidate.proxy_acc if o == "acc" else candidate.value(o)) for o in objectives]  # type: ignore[arg-type]


def worker_id() -> str:
    """This process as ``host:pid``, recorded on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def reap_dead_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, every: bool = False) -> int:
    """Fail and re-enqueue the running trials of processes on this host that no longer exist.

    A worker killed mid-trial leaves its trial RUNNING. RDB storages detect that by heartbeat after a
    grace period; this settles it at once for local workers (and is the only way for journal
    storages, which have no heartbeat). The trial is enqueued again with its parameters and its task (a
    trial without one gets the task ``retry N``, so that two workers reaping it at once run it once).
    With ``every`` (the study is the caller's alone: a run directory's own study, read before its workers
    start), every running trial is a leftover of a killed command, also one killed before it recorded its
    worker or its first heartbeat (while the sampler proposed it), which nothing else would ever settle.
    Returns the number of trials reaped here.
    """
    host = socket.gethostname()
    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get("worker", ""))
        name, _, pid = owner.rpartition(":")
        if not every and (name != host or not pid.isdigit() or _alive(int(pid))):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "reason", f"worker {owner} died" if owner else
                                        "its command was killed before the trial recorded its worker")
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker reaped it first
            continue
        params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})
        if params or TASK_ATTR in trial.user_attrs:  # what it was doing is done again (else: nothing was begun)
            attrs = {k: v for k, v in trial.user_attrs.items() if k != "worker"}
            attrs.setdefault(TASK_ATTR, f"retry {trial.number}")
            study.enqueue_trial(params, user_attrs=attrs)
        reaped += 1
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage fails stale trials of dead workers by itself (RDB storages here)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return bool(interval and interval())


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward a search's evaluations: finished, stopped by racing, or failed by its
    evaluation."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "fail"
    ) or (trial.state == TrialState.PRUNED and trial.user_attrs.get("status") == "stopped")


def ahead_of(trials: Sequence[FrozenTrial], number: int) -> int:
    """How many candidates of a study come before trial ``number``: the counted trials and those below it that are
    running or waiting (a waiting one, a dead worker's enqueued again, is numbered when enqueued: a trial created
    just after it and the worker that claims it would each miss the other if waiting ones were left out)."""
    return sum(counted(t) or (t.number < number and t.state in (TrialState.RUNNING, TrialState.WAITING))
               for t in trials)


def enqueue_tasks(study: optuna.Study, tasks: Mapping[str, tuple[Mapping[str, float], Mapping[str, Any]]]) -> int:
    """Enqueue each task (``name -> (params, user attributes)``) that no trial of the study holds yet; returns how
    many were enqueued."""
    held = held_tasks(study.get_trials(deepcopy=False))
    fresh = [name for name in tasks if name not in held]
    for name in fresh:
        params, attrs = tasks[name]
        study.enqueue_trial(dict(params), user_attrs={**attrs, TASK_ATTR: name})
    return len(fresh)


def held_tasks(trials: Sequence[FrozenTrial]) -> set[Any]:
    """The tasks that a live trial holds (waiting, running, finished, or failed by its evaluation); a dropped or
    dead trial's task is free to be enqueued again."""
    return {t.user_attrs.get(TASK_ATTR) for t in trials if t.state != TrialState.FAIL or counted(t)}


def owner_before(study: optuna.Study, number: int, task: str | None) -> int | None:
    """The number of a trial below ``number`` that owns ``task`` (alive: waiting, running or finished, or failed by
    its evaluation); None when trial ``number`` is the first (or has no task)."""
    if task is None:
        return None
    for t in study.get_trials(deepcopy=False):
        if t.number < number and t.user_attrs.get(TASK_ATTR) == task and (t.state != TrialState.FAIL or counted(t)):
            return t.number
    return None


def done_tasks(trials: Sequence[FrozenTrial]) -> set[str]:
    """The tasks whose candidate is recorded (counted trials)."""
    return {str(t.user_attrs[TASK_ATTR]) for t in trials if TASK_ATTR in t.user_attrs and counted(t)}


class Dropped(Exception):
    """Raised inside a claimed trial that has no work of its own (a copy of a task another trial owns, a trial
    created when the waiting ones had been taken, one beyond the evaluations): Optuna records it failed, and it is
    never counted."""


def drop(trial: optuna.Trial, reason: str) -> None:
    """Give up a claimed trial: its reason is recorded, and it ends failed (uncounted)."""
    trial.set_user_attr("reason", reason)
    raise Dropped(reason)


def claim(study: optuna.Study, work: Callable[[optuna.Trial], Any], catch: tuple[type[Exception], ...] = (),
          tasks_only: bool = False) -> None:
    """Run one trial of ``study`` through ``work(trial)`` (its value, or an exception in ``catch`` to fail it).

    Optuna's optimize loop pops the oldest waiting trial (a new one when none waits), keeps the heartbeat of
    an RDB storage and first fails the stale trials of dead workers. The trial records this worker; a copy of
    a task that a lower-numbered trial owns is dropped, and so, with ``tasks_only``, is a new trial (another
    worker took the last waiting one between the caller's look and Optuna's pop).
    """
    def objective(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", worker_id())
        if tasks_only and TASK_ATTR not in trial.user_attrs:
            drop(trial, "no task was waiting (another worker took the last one)")
        owner = owner_before(study, trial.number, trial.user_attrs.get(TASK_ATTR))
        if owner is not None:
            drop(trial, f"a copy of trial {owner}'s task")
        return work(trial)

    study.optimize(objective, n_trials=1, catch=(Dropped, *catch), gc_after_trial=False)


def waiting_params(trial: optuna.Trial) -> dict[str, Any] | None:
    """The parameters a claimed trial was enqueued with (None: a new trial, enqueued by nobody)."""
    fixed = trial.storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
    return dict(fixed) if isinstance(fixed, dict) else None


def bind_settings(study: optuna.Study, settings: Mapping[str, object]) -> None:
    """Record a run's settings on its study (the first run to open it), or check them against the recorded ones.

    Every machine that joins a shared study must search the same thing; only :data:`MACHINE_SETTINGS` may
    differ. The recorded settings let any machine write the run's outputs (``autoprune report``).

    Raises:
        ConfigError: if the study was started with other settings.
    """
    plain = json.loads(json.dumps(dict(settings)))  # as the storage keeps them (tuples become lists)
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(saved, dict):
        study.set_user_attr(SETTINGS_ATTR, plain)
        return
    differ = [k for k, v in plain.items() if k not in MACHINE_SETTINGS and k in saved and saved[k] != v]
    if differ:
        raise ConfigError(f"study {study.study_name!r} was started with other settings ({', '.join(differ)}); run "
                          f"the same command on every machine, or choose another --study-name")


def study_settings(study: optuna.Study) -> dict[str, object]:
    """The settings recorded on a study by :func:`bind_settings`.

    Raises:
        ConfigError: if the study holds none (it was not made by an autoprune search).
    """
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(saved, dict):
        raise ConfigError(f"study {study.study_name!r} records no autoprune search settings; was it made by "
                          f"`autoprune search` (0.1 or later)?")
    return saved


def load_study(storage: optuna.storages.BaseStorage, name: str, url: str) -> optuna.Study:
    """An existing study of the storage at ``url``.

    Raises:
        ConfigError: if the storage holds no study of that name, naming the ones it holds.
    """
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        raise ConfigError(f"storage {url!r} holds no study {name!r} (it holds: {', '.join(names) or 'none'}); "
                          f"give the --study-name of the search") from None
