"""Running a search as a command: run directory, records, worker processes, the final policy, ``pick``.

Everything a run needs is in its ``config.yaml`` (the resolved settings), so worker processes, a
rerun of the same command (which resumes it) and ``autoprune pick`` rebuild the same experiment.
The final policy is chosen from ``trials.csv``, which holds every candidate of every worker.
"""

from __future__ import annotations

import copy
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune.core.budget import Budget
from autoprune.core.cost import (
    FLOPS_LABEL,
    LatencySettings,
    count_params,
    fvcore_flops,
    measure_latency,
)
from autoprune.core.latency_table import latency_table_for, resolve_latency_model
from autoprune.core.policy import PolicyRecord
from autoprune.errors import ConfigError
from autoprune.experiment import DataOptions, Experiment
from autoprune.presets import EnvConfig
from autoprune.run.directory import (
    TrialRecorder,
    new_run_dir,
    plot_pareto,
    plot_policy,
    plot_trials,
    read_trials,
    write_config,
    write_summary,
)
from autoprune.run.study import (
    StudyRecorder,
    counted,
    open_storage,
    open_study,
    parse_objectives,
    reap_dead_trials,
)
from autoprune.search import Searcher, get_searcher, methods_where

CONFIG_FILE = "config.yaml"


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

    @property
    def env_config(self) -> EnvConfig:
        """The environment configuration."""
        return EnvConfig(**self.env)

    @property
    def study(self) -> str:
        """The study name: given, or derived from env, budget and method."""
        return self.study_name or f"{self.env['name']}-{self.budget}-{self.method}"

    def experiment(self) -> Experiment:
        """Build the experiment these settings describe."""
        budget = Budget.parse(self.budget)
        latency = LatencySettings(device=self.device, threads=self.threads) if self.latency or budget.metric == "latency" else None
        options = DataOptions(self.data_dir, None, self.download, self.trust_checkpoint)
        model = resolve_latency_model(self.latency_model, get_searcher(self.method).latency_model, budget)
        exp = Experiment.from_config(self.env_config, options, device=self.device, latency=latency)
        if model == "lut":
            exp.evaluator.latency_table = latency_table_for(exp.model, exp.example_inputs, exp.space, latency,
                                                            exp.evaluator.pruner.prune)
        return exp

    def searcher(self, exp: Experiment, seed_offset: int = 0) -> Searcher:
        """The searcher, validated against the experiment (budget reachable, options known)."""
        cls = get_searcher(self.method)
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.workers > 1 and not cls.parallel:
            raise ConfigError(f"--workers > 1 needs a method whose workers share one study "
                              f"({', '.join(methods_where('parallel'))}); {self.method} runs in one process")
        options = cls.resolve_options(self.method_options, sampler=self.sampler,
                                      objectives=parse_objectives(self.objectives))
        return cls(exp.evaluator, Budget.parse(self.budget), evals=self.evals, seed=self.seed + seed_offset, **options)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for ``config.yaml`` and worker processes."""
        return asdict(self)


def run_search(settings: SearchSettings, out: str | None, progress: bool = True) -> Path:
    """Validate everything, then search and write the run directory; returns its path.

    Rerunning with the same settings and the same ``out`` resumes the run: finished candidates are
    kept and only the remaining evaluations are made.

    Raises:
        AutopruneError: for any bad input, before anything is written.
    """
    exp = settings.experiment()
    searcher = settings.searcher(exp)
    storage = open_storage(settings.storage) if settings.storage else None
    run_dir = _prepare_run_dir(settings, out)
    storage = storage or open_storage(None, run_dir)
    objectives = parse_objectives(settings.objectives)
    study = open_study(storage, settings.study, objectives)
    reap_dead_trials(study, storage)
    _attach_records(exp, searcher, storage, study, run_dir, objectives)
    start = time.perf_counter()
    if settings.workers == 1:
        search_in_process(searcher, exp, progress)
    else:
        _search_with_workers(settings, run_dir, study, progress)
    finish(run_dir, exp, settings, seconds=time.perf_counter() - start)
    return run_dir


def _prepare_run_dir(settings: SearchSettings, out: str | None) -> Path:
    if out is not None and (Path(out) / CONFIG_FILE).is_file():
        previous = yaml.safe_load((Path(out) / CONFIG_FILE).read_text()) or {}
        if _recorded_settings(previous.get("settings")) != settings.to_dict():
            raise ConfigError(f"run directory {out!r} holds a run with other settings; rerun it with the same "
                              f"options to resume it, or choose another --out")
        if not get_searcher(settings.method).resumable:
            raise ConfigError(f"run directory {out!r} already holds this {settings.method} run; only "
                              f"{', '.join(methods_where('resumable'))} runs resume by rerunning the command (their "
                              f"study or saved agent knows what is done); choose another --out")
        return Path(out)
    run_dir = new_run_dir(out, settings.env["name"], settings.method)
    write_config(run_dir, {"command": "search", "settings": settings.to_dict()})
    return run_dir


def _recorded_settings(saved: Any) -> dict[str, Any] | None:
    """A run's recorded settings with defaults for fields added since it was made (None if unreadable)."""
    try:
        return SearchSettings(**saved).to_dict()
    except TypeError:
        return None


def _attach_records(exp: Experiment, searcher: Searcher, storage: Any, study: Any, run_dir: Path,
                    objectives: tuple[str, ...]) -> None:
    exp.evaluator.observers.append(TrialRecorder(run_dir / "trials.csv", exp.space.names))
    exp.evaluator.observers.append(StudyRecorder(study, exp.space, objectives))
    searcher.attach_run(run_dir, study, storage)


def search_in_process(searcher: Searcher, exp: Experiment, progress: bool, leave: bool = True) -> None:
    """Run ``searcher`` here, with a progress bar showing the best policy so far (``leave``: keep it when done)."""
    from tqdm import tqdm

    dense = exp.evaluator.cost.dense_flops
    with tqdm(total=searcher.planned_evaluations, desc=searcher.name, unit=searcher.progress_unit, disable=not progress,
              mininterval=0.5, file=sys.stderr, leave=leave) as bar:
        def report(candidate: Any, best: Any) -> None:
            if best is not None:
                bar.set_postfix_str(f"best {100 * best.proxy_acc:.2f}% at {best.flops / dense:.3f} FLOPs")
            bar.update(1)

        searcher.search(report)


def _worker(settings: dict[str, Any], index: int, run_dir: str) -> None:
    """One worker process: rebuild the experiment and work on the shared study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = SearchSettings(**settings)
    exp = s.experiment()
    searcher = s.searcher(exp, seed_offset=index)
    storage = open_storage(s.storage, Path(run_dir))
    objectives = parse_objectives(s.objectives)
    _attach_records(exp, searcher, storage, open_study(storage, s.study, objectives), Path(run_dir), objectives)
    searcher.search()


def _search_with_workers(settings: SearchSettings, run_dir: Path, study: Any, progress: bool) -> None:
    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(settings.to_dict(), i, str(run_dir)), daemon=False)
               for i in range(settings.workers)]
    for w in workers:
        w.start()
    with tqdm(total=settings.evals, desc=f"{settings.method} x{settings.workers}", unit="eval", disable=not progress,
              file=sys.stderr) as bar:
        while any(w.is_alive() for w in workers):
            time.sleep(1.0)
            bar.n = min(settings.evals, sum(counted(t) for t in study.get_trials(deepcopy=False)))
            bar.refresh()
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        raise ConfigError(f"{len(failed)} of {settings.workers} workers failed (exit codes {failed}); "
                          f"rerun the same command to resume")


def finish(run_dir: Path, exp: Experiment, settings: SearchSettings, seconds: float,
           budget: Budget | None = None, found_in: Path | None = None) -> PolicyRecord:
    """Choose the best recorded candidate within the budget and write policy, summary and plots.

    Args:
        run_dir: where to write (the run directory, or a ``pick`` output folder).
        exp: the experiment.
        settings: the run's settings.
        seconds: wall time of this command.
        budget: pick under this budget instead of the run's (``autoprune pick``).
        found_in: the run directory whose ``trials.csv`` holds the candidates (default ``run_dir``).

    Raises:
        ConfigError: if no recorded candidate meets the budget.
    """
    trials = read_trials((found_in or run_dir) / "trials.csv")
    budget = budget or Budget.parse(settings.budget)
    limit = budget.limit(exp.evaluator.dense_cost(budget.metric))
    column = {"flops": "flops", "params": "params", "latency": "latency_ms"}[budget.metric]
    if column not in trials or trials[column].isna().all():
        raise ConfigError(f"run {str(found_in or run_dir)!r} measured no {budget.metric}; search with --latency to pick by it")
    feasible = trials[(trials["status"] == "ok") & (trials[column] <= limit)]
    if feasible.empty:
        raise ConfigError(f"no recorded candidate meets budget {budget} ({len(trials)} candidates); "
                          f"choose a looser budget or search again")
    best_row = feasible["proxy_acc"].idxmax()
    best = feasible.loc[best_row]
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
    config = settings.env_config
    searcher_options = get_searcher(settings.method).resolve_options(
        settings.method_options, sampler=settings.sampler, objectives=parse_objectives(settings.objectives))
    record = PolicyRecord(
        ratios={n: float(best[f"ratio:{n}"]) for n in exp.space.names},
        channels={u.name: {"dense": u.channels, "kept": kept[u.name]} for u in exp.space.units},
        model=config.model, input_shape=list(x.shape), criterion=config.criterion,
        round_to={u.name: u.round_to for u in exp.space.units}, budget=str(budget), metrics=metrics,
        found_by={"method": str(best["method"]), "seed": settings.seed, "evaluations": len(trials),
                  "seconds": round(seconds, 3), "sampler": searcher_options.get("sampler")},
        env=config.name, weights=exp.weights_source, search_space=config.search_space,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    record.save(run_dir / "policy.json")
    fresh = trials[trials["cached"] == False]  # noqa: E712  (a column of booleans)
    forward = sum(fresh[c].fillna(0).sum() for c in ("time_recover", "time_recalibrate", "time_score") if c in fresh)
    total = fresh["time_total"].fillna(0).sum()
    write_summary(run_dir, record, dense, {
        "limit": limit, "metric_label": {"flops": FLOPS_LABEL, "params": "params", "latency": "ms"}[budget.metric],
        "evals_per_min": 60 * len(trials) / total if total else 0.0,
        "overhead_fraction": 1 - forward / total if total else 0.0, "device": settings.device,
        "proxy_split": config.splits["proxy"], "report_split": config.splits["report"]})
    dense_flops = float(dense["flops"])
    plot_trials(run_dir, trials, best_row, limit if budget.metric == "flops" else None, dense_flops)
    plot_policy(run_dir, record)
    if len(parse_objectives(settings.objectives)) > 1:
        plot_pareto(run_dir, trials, dense_flops)
    return record


def pick(run: str, budget_text: str, out: str | None) -> tuple[Path, PolicyRecord]:
    """Take the best recorded policy of a finished run under another budget, without searching.

    Raises:
        AutopruneError: if the run cannot be read or no candidate meets the budget.
    """
    run_dir = Path(run)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / "trials.csv").is_file():
        raise ConfigError(f"{run!r} is not a search run directory (no {CONFIG_FILE} and trials.csv)")
    budget = Budget.parse(budget_text)
    doc = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    try:
        settings = SearchSettings(**doc["settings"])
    except (KeyError, TypeError):
        raise ConfigError(f"{run!r} has a {CONFIG_FILE} this autoprune cannot read") from None
    exp = settings.experiment()
    out_dir = Path(out) if out else run_dir / f"pick-{budget}"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{str(out_dir)!r} already exists and is not empty; choose another --out")
    return out_dir, finish(out_dir, exp, settings, seconds=0.0, budget=budget, found_in=run_dir)
