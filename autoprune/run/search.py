"""Running a search as a command: run directory, records, worker processes, the final policy, ``pick``.

Everything a run needs is in its ``config.yaml`` (the resolved settings), so worker processes, a
rerun of the same command (which resumes it) and ``autoprune pick`` rebuild the same experiment.
The run's record is its Optuna study (:mod:`autoprune.trials.record`): it holds every candidate of every
worker, a rerun replays or continues from it, and the final policy is chosen from it; ``trials.csv``
is its export.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pandas as pd

from autoprune.console import Progress, plural, status
from autoprune.core.budget import Budget
from autoprune.core.cost import (
    LatencySettings,
    count_params,
    fvcore_flops,
    measure_latency,
)
from autoprune.core.latency_table import resolve_latency_model
from autoprune.core.metrics import get_metric, recorded_metrics
from autoprune.core.policy import PolicyRecord
from autoprune.core.projection import check_below_dense
from autoprune.errors import AutopruneError, ConfigError
from autoprune.experiment import DataOptions, Experiment, build_experiment
from autoprune.io import check_output_dir, prepare_output_dir
from autoprune.presets import EnvConfig
from autoprune.run.confirm import DEFAULT_CANDIDATES, DEFAULT_IMAGES, best_first, confirm
from autoprune.run.directory import (
    CONFIG_FILE,
    hold_run_dir,
    new_run_dir,
    plot_pareto,
    plot_policy,
    plot_trials,
    read_run_config,
    write_config,
    write_summary,
)
from autoprune.run.interrupt import GracefulStop, StopRequested, graceful_stop
from autoprune.search import Searcher, get_searcher, methods_where
from autoprune.trials.record import (
    TRIALS_FILE,
    StudyRecorder,
    TrialRecorder,
    export_trials,
    exported_rows,
    recorded_candidates,
    trials_frame,
)
from autoprune.trials.study import (
    STUDY_FILE,
    bind_settings,
    counted,
    open_storage,
    open_study,
    parse_objectives,
    reap_dead_trials,
)


@dataclass
class SearchSettings:
    """Everything that defines a search run (written to, and read back from, ``config.yaml``)."""

    env: dict[str, Any]
    budget: str
    method: str = "random"
    evals: int = 100
    seed: int = 0
    sampler: str = "tpe"
    objectives: str = "acc"
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    latency: bool = False
    device: str = "cpu"
    threads: int = 1
    data_dir: str | None = None
    download: bool = False
    trust_checkpoint: bool = False
    method_options: dict[str, Any] = field(default_factory=dict)
    latency_model: str | None = None  # lut or measure; default: lut for netadapt and sensitivity, measure otherwise
    racing: str = "on"  # on, off, or ascending proxy-image counts (250,500); applies to the methods that race
    confirm: int = DEFAULT_CANDIDATES  # top candidates scored again on unseen proxy-split images (0: best proxy acc)
    confirm_images: int = DEFAULT_IMAGES  # most unseen images they are scored on

    @property
    def env_config(self) -> EnvConfig:
        """The environment configuration."""
        return EnvConfig(**self.env)

    @property
    def study(self) -> str:
        """The study name: given, or derived from env, budget and method."""
        return self.study_name or f"{self.env['name']}-{self.budget}-{self.method}"

    def experiment(self) -> Experiment:
        """Build the experiment these settings describe.

        Raises:
            ConfigError: for several workers of a method that cannot share its study, and other bad settings.
        """
        cls = get_searcher(self.method)
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.workers > 1 and not cls.parallel:
            raise ConfigError(f"--method {self.method} runs in one process, not on --workers {self.workers}; "
                              f"methods that run on several workers: {', '.join(methods_where('parallel'))}")
        if self.confirm < 0 or self.confirm_images < 0:
            raise ConfigError(f"--confirm and --confirm-images must be >= 0, got {self.confirm} and {self.confirm_images}")
        budget = Budget.parse(self.budget)
        latency = LatencySettings(device=self.device, threads=self.threads) if self.latency or get_metric(budget.metric).measured else None
        options = DataOptions(self.data_dir, None, self.download, self.trust_checkpoint)
        if self.racing != "on" and not cls.races:
            raise ConfigError(f"--racing applies to {', '.join(methods_where('races'))}, not --method {self.method}")
        model = resolve_latency_model(self.latency_model, cls.latency_model, budget)
        return build_experiment(self.env_config, data=options, device=self.device, latency=latency, latency_model=model,
                                racing=self.racing if cls.races else "off")

    @property
    def shared(self) -> bool:
        """Whether other workers may share the run's study: several workers, or a storage other machines can join."""
        return self.workers > 1 or self.storage is not None

    def searcher(self, exp: Experiment, worker: int = 0) -> Searcher:
        """The searcher of worker ``worker``, validated against the experiment (budget reachable, options known)."""
        cls = get_searcher(self.method)
        options = cls.resolve_options(self.method_options, sampler=self.sampler,
                                      objectives=parse_objectives(self.objectives))
        if self.shared:
            cls.check_shared(options)
        searcher = cls(exp.evaluator, Budget.parse(self.budget), evals=self.evals, seed=self.seed, **options)
        searcher.shared = searcher.shared or self.shared  # (Optuna always works on a study)
        searcher.worker = worker
        return searcher

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for ``config.yaml`` and worker processes."""
        return asdict(self)


def run_search(settings: SearchSettings, out: str | None, progress: bool = True) -> Path:
    """Validate everything, then search and write the run directory; returns its path.

    Rerunning with the same settings and the same ``out`` resumes the run: finished candidates are
    kept and only the remaining evaluations are made. One command at a time works on a run directory.
    SIGINT or SIGTERM stops the search once the running candidate is recorded and writes the outputs
    from the record (:mod:`autoprune.run.interrupt`).

    Raises:
        AutopruneError: for any bad input, before anything is written.
        StopRequested: after a signal stopped the search (its message says what was written).
    """
    parallel = settings.workers > 1 and get_searcher(settings.method).parallel
    with WorkerPool(settings) if parallel else contextlib.nullcontext() as pool:
        return _run_search(settings, out, progress, pool)


def _run_search(settings: SearchSettings, out: str | None, progress: bool, pool: WorkerPool | None) -> Path:
    exp = settings.experiment()
    searcher = settings.searcher(exp)
    objectives = parse_objectives(settings.objectives)
    storage = study = None
    if settings.storage:  # a shared study is checked before anything is written here
        storage = open_storage(settings.storage)
        study = _open_run_study(storage, settings, Path(out or "."), objectives)
        bind_settings(study, settings.to_dict())
    with contextlib.ExitStack() as held:
        run_dir = _prepare_run_dir(settings, out, held, fidelity(searcher))
        if study is None:
            storage = open_storage(None, run_dir)
            study = _open_run_study(storage, settings, run_dir, objectives)
            bind_settings(study, settings.to_dict())
        reap_dead_trials(study, storage, every=settings.storage is None)  # the run's own study, this command's alone yet
        recorded = recorded_candidates(study)
        _check_record(run_dir, len(recorded), settings)
        if recorded:
            status(f"resuming: {plural(len(recorded), 'candidate')} recorded in the run's study")
            export_trials(study, exp.space.names, run_dir)  # the live export appends after the record's rows
        _attach_records(exp, study, run_dir, objectives)
        searcher.attach_run(run_dir, study, storage, recorded)
        start = time.perf_counter()
        with graceful_stop() as stop:
            exp.evaluator.observers.append(stop)  # after the records: a candidate is recorded before the search stops
            try:
                if settings.workers == 1:
                    search_in_process(searcher, exp, progress)
                else:
                    assert pool is not None
                    _search_with_workers(settings, searcher, exp, run_dir, study, pool, progress, stop)
            except StopRequested as e:
                raise _stopped(e.signum, run_dir, exp, settings, study, time.perf_counter() - start) from None
        finish(run_dir, exp, settings, export_trials(study, exp.space.names, run_dir),
               seconds=time.perf_counter() - start)
    return run_dir


def _stopped(signum: int, run_dir: Path, exp: Experiment, settings: SearchSettings, study: Any,
             seconds: float) -> StopRequested:
    """Write the outputs of a search stopped by a signal from what it recorded; the error saying so."""
    recorded = len(recorded_candidates(study))
    try:
        finish(run_dir, exp, settings, export_trials(study, exp.space.names, run_dir), seconds=seconds)
        written = f"the best of them is in {run_dir / 'policy.json'}"
    except ConfigError as e:  # nothing recorded yet, or nothing within the budget yet
        written = f"no policy written ({e})"
    name = signal.Signals(signum).name
    return StopRequested(signum, f"stopped by {name} after {plural(recorded, 'recorded candidate')}; {written}; "
                                 f"rerun the same command to resume")


def _open_run_study(storage: Any, settings: SearchSettings, run_dir: Path, objectives: tuple[str, ...]) -> Any:
    """The run's study; a damaged ``study.db`` of the run directory is one line naming it."""
    try:
        return open_study(storage, settings.study, objectives)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (SQLAlchemy raises many types for a damaged database file)
        where = settings.storage or str(run_dir / STUDY_FILE)
        raise ConfigError(f"the run's study {where!r} cannot be read ({type(e).__name__}); it is the run's record: "
                          f"restore it from a copy, or start again with another --out") from None


def _check_record(run_dir: Path, recorded: int, settings: SearchSettings) -> None:
    """Refuse to resume when the study holds no candidate but ``trials.csv`` lists some: the study, the run's
    record, was emptied or replaced. (The export may lead the study by the candidates that were being
    recorded when a worker was killed; those are simply evaluated again.)"""
    listed = exported_rows(run_dir)
    if listed and not recorded:
        where = settings.storage or str(run_dir / STUDY_FILE)
        raise ConfigError(f"the run's study {where!r} holds no candidate but trials.csv lists {listed}: the study is "
                          f"the run's record; restore it from a copy, or start again with another --out")


def fidelity(searcher: Searcher) -> dict[str, Any]:
    """How the search scores its candidates, for ``config.yaml``: the proxy images, and the racing stages."""
    evaluator = searcher.evaluator
    record: dict[str, Any] = {"proxy_images": len(evaluator.proxy), "racing": searcher.racing}
    if searcher.racing:
        racing = evaluator.racing
        record.update(stages=list(racing.stages), confidence=racing.confidence,  # type: ignore[union-attr]
                      early_calibration_batches=racing.batches_before_last(  # type: ignore[union-attr]
                          len(evaluator.proxy.calibration)))
    return record


def _prepare_run_dir(settings: SearchSettings, out: str | None, held: contextlib.ExitStack,
                     scoring: dict[str, Any]) -> Path:
    """The run directory, held by this command (in ``held``) before its ``config.yaml`` is read or written;
    ``scoring``: how candidates are scored (:func:`fidelity`), recorded in a new run's ``config.yaml``."""
    resumed = out is not None and (Path(out) / CONFIG_FILE).is_file()
    run_dir = Path(out) if resumed else new_run_dir(out, settings.env["name"], settings.method)  # type: ignore[arg-type]
    held.enter_context(hold_run_dir(run_dir))
    if (run_dir / CONFIG_FILE).is_file():
        recorded = _recorded_settings(read_run_config(run_dir).get("settings"))
        if recorded is None:
            raise ConfigError(f"{str(run_dir / CONFIG_FILE)!r} holds no run settings this autoprune can read (damaged, "
                              f"or from another version); restore it from a copy, or choose another --out")
        if recorded != settings.to_dict():
            raise ConfigError(f"run directory {str(run_dir)!r} holds a run with other settings (its {CONFIG_FILE}); "
                              f"rerun it with the same options to resume it, or choose another --out")
        return run_dir
    write_config(run_dir, {"command": "search", "settings": settings.to_dict(), "fidelity": scoring})
    return run_dir


def read_settings(run: str | Path, flag: str = "") -> SearchSettings:
    """The settings recorded in a run directory's ``config.yaml`` (``flag``: the option naming it, for messages).

    Raises:
        ConfigError: if the run has no readable ``config.yaml`` or its settings are not this autoprune's.
    """
    doc = read_run_config(run, flag)
    try:
        return SearchSettings(**doc["settings"])
    except (KeyError, TypeError):
        named = f"{flag} {str(run)!r}" if flag else repr(str(run))
        raise ConfigError(f"{named} has a {CONFIG_FILE} this autoprune cannot read") from None


def _recorded_settings(saved: Any) -> dict[str, Any] | None:
    """A run's recorded settings with defaults for fields added since it was made (None if unreadable)."""
    try:
        return SearchSettings(**saved).to_dict()
    except TypeError:
        return None


def _attach_records(exp: Experiment, study: Any, run_dir: Path, objectives: tuple[str, ...]) -> None:
    """Record every candidate in the study (first: the record) and append it to ``trials.csv`` (its live export)."""
    exp.evaluator.observers.append(StudyRecorder(study, exp.space, objectives))
    exp.evaluator.observers.append(TrialRecorder(run_dir / TRIALS_FILE, exp.space.names))


def search_in_process(searcher: Searcher, exp: Experiment, progress: bool, leave: bool = True) -> None:
    """Run ``searcher`` here, with a progress display showing the best policy so far (``leave``: keep it when done)."""
    dense = exp.evaluator.cost.dense_flops
    with Progress(searcher.planned_evaluations, searcher.name, searcher.progress_unit, progress, leave=leave) as bar:
        def report(candidate: Any, best: Any) -> None:
            if best is not None:
                bar.set_postfix(_best_text(best, dense))
            bar.update()

        searcher.search(report)


def _best_text(best: Any, dense_flops: float) -> str:
    """The progress line's best-so-far: its proxy accuracy and FLOPs fraction."""
    return f"best {100 * best.proxy_acc:.2f}% at {best.flops / dense_flops:.3f} FLOPs"


def _worker(settings: dict[str, Any], index: int, go: Connection) -> None:
    """One worker process: build the experiment while the command prepares the run, then, once the command sends
    the run directory, work on the shared study."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the search: Ctrl-C stops the command, which stops this one
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = SearchSettings(**settings)
    try:
        exp = s.experiment()
        searcher = s.searcher(exp, worker=index)
    except AutopruneError:
        sys.exit(2)  # the command, building the same experiment, says what is wrong
    try:
        run_dir = Path(go.recv())
    except EOFError:  # the command ended before searching
        return
    storage = open_storage(s.storage, run_dir)
    objectives = parse_objectives(s.objectives)
    study = open_study(storage, s.study, objectives)
    _attach_records(exp, study, run_dir, objectives)
    searcher.attach_run(run_dir, study, storage)
    with graceful_stop() as stop:
        exp.evaluator.observers.append(stop)
        with contextlib.suppress(StopRequested):  # the command writes the outputs
            searcher.search()


class WorkerPool:
    """Workers 1..K-1 of a search on K workers (the command is worker 0), as spawned processes.

    They are started before the command validates the settings and builds its own experiment, so that their start
    (imports, data, network) overlaps it; each then waits for the run directory (:meth:`go`). Leaving the block
    before :meth:`go` (bad input, a signal) terminates them: a worker writes nothing before it has the run directory.
    """

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict[int, Any] = {}
        self.run_dir: Path | None = None
        self._pipes: dict[int, Connection] = {}

    def __enter__(self) -> WorkerPool:
        for index in range(1, self.settings.workers):
            self.start(index)
        return self

    def start(self, index: int) -> None:
        """Start worker ``index`` (again, replacing one that was killed); it gets the run directory once known."""
        if index in self._pipes:  # the pipe of the worker this one replaces
            self._pipes[index].close()
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_worker, args=(self.settings.to_dict(), index, receive), daemon=False)
        process.start()
        receive.close()
        self.processes[index], self._pipes[index] = process, send
        if self.run_dir is not None:
            send.send(str(self.run_dir))

    def go(self, run_dir: Path) -> None:
        """Send every worker the run directory: they open its study and search."""
        self.run_dir = run_dir
        for pipe in self._pipes.values():
            with contextlib.suppress(OSError):  # a worker that died already is reported by its exit code
                pipe.send(str(run_dir))

    def alive(self) -> bool:
        """Whether any worker is still running."""
        return any(p.is_alive() for p in self.processes.values())

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            if process.is_alive() and (self.run_dir is None or exc[0] is not None):
                process.terminate()
            process.join()
        for pipe in self._pipes.values():
            pipe.close()


def _search_with_workers(settings: SearchSettings, searcher: Searcher, exp: Experiment, run_dir: Path, study: Any,
                         pool: WorkerPool, progress: bool, stop: GracefulStop) -> None:
    """Search on ``settings.workers`` workers sharing the run's study: this process is worker 0 (``searcher``, on
    the experiment it has built) and the processes of ``pool`` are workers 1... A worker killed by a signal that is
    not this command's is replaced (its trial is settled and evaluated again), up to once per worker."""
    extra = settings.workers - 1
    status(f"searching with {plural(extra, 'more worker process', 'more worker processes')}; this process is worker 0")
    pool.go(run_dir)
    workers = pool.processes
    replaced = 0

    def replace_killed() -> None:
        nonlocal replaced
        for i, w in list(workers.items()):
            if w.exitcode is not None and w.exitcode < 0 and stop.signum is None and replaced < extra:
                status(f"worker {i} was killed by {signal.Signals(-w.exitcode).name}; starting another")
                pool.start(i)
                replaced += 1

    stopping = threading.Event()

    def tend() -> None:  # while this process searches: collect exited workers (a dead worker not yet collected
        while not stopping.wait(0.2):  # would look alive to the others, who settle its trial) and replace killed ones
            replace_killed()

    tender = threading.Thread(target=tend, name="tend-workers", daemon=True)
    tender.start()
    dense = exp.evaluator.cost.dense_flops
    with Progress(settings.evals, f"{settings.method} x{settings.workers}", "eval", progress) as bar:
        def show_count() -> None:
            bar.set(min(settings.evals, sum(counted(t) for t in study.get_trials(deepcopy=False))))

        def report(candidate: Any, best: Any) -> None:  # after each of this worker's candidates
            show_count()
            best = searcher.incumbent()
            if best is not None:
                bar.set_postfix(_best_text(best, dense))

        try:
            searcher.search(report)
        finally:  # the other workers finish their trials (a stop reaches them: Ctrl-C by itself, SIGTERM from here)
            stopping.set()
            tender.join()
            if stop.signum == signal.SIGTERM:
                for w in workers.values():
                    if w.is_alive() and w.pid is not None:
                        os.kill(w.pid, signal.SIGTERM)
            while True:
                replace_killed()
                if not pool.alive():
                    break
                time.sleep(0.2)
                show_count()
    failed = [w.exitcode for w in workers.values() if w.exitcode]
    if failed:
        raise ConfigError(f"{len(failed)} of {plural(extra, 'worker process', 'worker processes')} failed (exit codes "
                          f"{failed}); rerun the same command to resume")


def finish(run_dir: Path, exp: Experiment, settings: SearchSettings, trials: pd.DataFrame, seconds: float,
           budget: Budget | None = None, found_in: Path | None = None) -> PolicyRecord:
    """Choose the best recorded candidate within the budget and write policy, summary and plots.

    Args:
        run_dir: where to write (the run directory, or a ``pick`` output folder).
        exp: the experiment.
        settings: the run's settings.
        trials: the run's candidates, as read from its study (:func:`~autoprune.trials.record.trials_frame`).
        seconds: wall time of this command.
        budget: pick under this budget instead of the run's (``autoprune pick``).
        found_in: the run directory the candidates come from (default ``run_dir``).

    Raises:
        ConfigError: if no recorded candidate meets the budget.
        BudgetError: if the budget is above the dense network's cost.
    """
    budget = budget or Budget.parse(settings.budget)
    metric = get_metric(budget.metric)
    dense_cost = metric.dense_cost(exp.evaluator)
    limit = budget.limit(dense_cost)
    check_below_dense(limit, dense_cost, str(budget), metric.format)
    column = metric.column
    if column not in trials or trials[column].isna().all():
        raise ConfigError(f"run {str(found_in or run_dir)!r} measured no {budget.metric}; "
                          + ("search with --latency to pick by it" if metric.measured else "search again to record it"))
    feasible = trials[(trials["status"] == "ok") & (trials[column] <= limit)]
    if feasible.empty:
        raise ConfigError(f"no recorded candidate meets budget {budget} ({plural(len(trials), 'candidate')}); "
                          f"choose a looser budget or search again")
    rows = [(index, float(row["proxy_acc"]), {n: int(row[f"kept:{n}"]) for n in exp.space.names})
            for index, row in feasible.iterrows()]
    ranked = best_first(rows, lambda row: row[1], lambda row: row[2])
    confirmation = confirm(exp, [kept for _, _, kept in ranked], settings.confirm, settings.confirm_images)
    best_row = ranked[confirmation.chosen if confirmation is not None else 0][0]
    best = feasible.loc[best_row]
    status(f"scoring the best policy and the dense network on the {settings.env_config.splits['report']} split, "
           f"writing {run_dir}")
    kept = {n: int(best[f"kept:{n}"]) for n in exp.space.names}
    network = exp.evaluator.build(exp.space.policy_from_kept(kept))  # exactly what the proxy scored
    recalibrate = exp.evaluator.recovery is None
    x = exp.example_inputs
    dense_net = copy.deepcopy(exp.model)
    metrics = {"flops": fvcore_flops(network, x), "params": count_params(network), "proxy_acc": float(best["proxy_acc"]),
               "report_acc": exp.accuracy(network, "report", recalibrate=recalibrate)}
    dense = {"flops": fvcore_flops(dense_net, x), "params": count_params(dense_net),
             "proxy_acc": exp.evaluator.proxy.score(copy.deepcopy(dense_net)).accuracy,
             "report_acc": exp.accuracy(copy.deepcopy(dense_net), "report")}
    if budget.metric == "latency" or settings.latency:
        metrics["latency_ms"] = measure_latency(network, x, settings.device, threads=settings.threads)
        dense["latency_ms"] = measure_latency(dense_net, x, settings.device, threads=settings.threads)
    if exp.evaluator.latency_table is not None:  # what the search went by, against what was measured above
        metrics["latency_predicted_ms"] = exp.evaluator.latency_table.predict(kept)
        dense["latency_predicted_ms"] = exp.evaluator.latency_table.dense_ms
    for m in recorded_metrics():  # registered metrics beyond FLOPs, params and latency
        metrics[m.column] = m.cost(exp.evaluator)(kept)
        dense[m.column] = m.dense_cost(exp.evaluator)
    config = settings.env_config
    searcher_options = get_searcher(settings.method).resolve_options(
        settings.method_options, sampler=settings.sampler, objectives=parse_objectives(settings.objectives))
    record = PolicyRecord(
        ratios={n: float(best[f"ratio:{n}"]) for n in exp.space.names},
        channels={u.name: {"dense": u.channels, "kept": kept[u.name]} for u in exp.space.units},
        model=config.model, input_shape=list(x.shape), criterion=config.criterion,
        round_to={u.name: u.round_to for u in exp.space.units}, budget=str(budget), metrics=metrics,
        found_by={"method": str(best["method"]), "seed": settings.seed, "evaluations": len(trials),
                  "seconds": round(seconds, 3), "sampler": searcher_options.get("sampler"),
                  "confirmation": confirmation.record() if confirmation is not None else None},
        env=config.name, weights=exp.weights_source, search_space=config.search_space,
    )
    prepare_output_dir(run_dir, new=False)
    record.save(run_dir / "policy.json")
    fresh = trials[trials["cached"] == False]  # a column of booleans
    forward = sum(fresh[c].fillna(0).sum() for c in ("time_recover", "time_recalibrate", "time_score") if c in fresh)
    total = fresh["time_total"].fillna(0).sum()
    write_summary(run_dir, record, dense, {
        "limit": limit, "metric_label": metric.label,
        "evals_per_min": 60 * len(trials) / total if total else 0.0,
        "overhead_fraction": 1 - forward / total if total else 0.0, "device": settings.device,
        "proxy_split": config.splits["proxy"], "report_split": config.splits["report"]})
    dense_flops = float(dense["flops"])
    plot_trials(run_dir, trials, best_row, limit, dense_cost, metric)
    plot_policy(run_dir, record)
    if len(parse_objectives(settings.objectives)) > 1:
        plot_pareto(run_dir, trials, dense_flops)
    return record


def pick(run: str, budget_text: str, out: str | None) -> tuple[Path, PolicyRecord]:
    """Take the best recorded policy of a finished run under another budget, without searching.

    Raises:
        AutopruneError: if the run cannot be read or no candidate meets the budget.
    """
    budget = Budget.parse(budget_text)
    run_dir = Path(run)
    settings = read_settings(run)
    if settings.storage is None and not (run_dir / STUDY_FILE).is_file():
        raise ConfigError(f"{run!r} is not a search run directory (no {STUDY_FILE}, the run's record)")
    out_dir = check_output_dir(Path(out) if out else run_dir / f"pick-{budget}")
    storage = open_storage(settings.storage, run_dir)
    study = _open_run_study(storage, settings, run_dir, parse_objectives(settings.objectives))
    exp = settings.experiment()
    trials = trials_frame(study, exp.space.names)
    return out_dir, finish(out_dir, exp, settings, trials, seconds=0.0, budget=budget, found_in=run_dir)
