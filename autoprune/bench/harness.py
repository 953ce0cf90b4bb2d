"""``autoprune bench``: every search method on the same Evaluator, budget and evaluation count, over seeds.

A benchmark is a matrix of cells (method, budget, seed). Each cell is one search run in a fresh
experiment (no cache shared between cells), built from the same :class:`~autoprune.run.search.SearchSettings`
as ``autoprune search``, so every method sees the same proxy split, BN recalibration, cost model and
budget projection. The best policy of the cell is then scored on the report split (BN recalibrated,
no fine-tuning), timed on the device, and optionally fine-tuned with the same short schedule for
every method. Each finished cell is saved as JSON under ``<out>/cells/<name>/<budget>/`` at once; a
rerun skips finished cells, so a stopped benchmark resumes where it stopped. Cells run seed by seed,
so an interrupted run still has every method at its first seed. Deterministic methods (uniform,
NetAdapt) run one seed. :func:`benchmark` runs the matrix and writes the report
(:mod:`autoprune.bench.report`).

Processes of one folder claim cells with lock files (:func:`claim`). Processes on several machines share a
matrix through an Optuna storage (``--storage URL``): its cells are tasks of the study ``bench-<name>``
(:func:`~autoprune.trials.study.enqueue_tasks`), each claimed by one process, and each finished cell is
recorded on its trial, so the report of any process is built from every machine's cells.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from autoprune.bench.machine import library_versions, machine_description
from autoprune.bench.settings import BenchSettings
from autoprune.console import Progress, plural
from autoprune.core.cost import count_params, measure_latency
from autoprune.errors import ConfigError
from autoprune.experiment import Experiment
from autoprune.finetune.augment import augmentation_for
from autoprune.finetune.trainer import Finetuner, FinetuneSettings
from autoprune.io import atomic_write_text, check_output_dir, prepare_output_dir
from autoprune.presets import calibration_image_count
from autoprune.run.confirm import best_first, confirm
from autoprune.run.search import SearchSettings, search_in_process
from autoprune.search import get_searcher
from autoprune.search.sensitivity_scan import DEFAULT_RATIOS, parse_ratios, scan
from autoprune.trials.study import bind_settings, counted, enqueue_tasks, open_storage, open_study
from autoprune.trials.study import claim as claim_task

CELL_FORMAT = 1
REFERENCE_IMAGES = 256
"""Images of each cell's reference workload (:func:`reference_speed`): a few seconds of CPU on ResNet-56."""


def check_identity(settings: BenchSettings) -> None:
    """Check the settings against those saved beside existing cells (nothing is written).

    Raises:
        ConfigError: if the saved cells were made with other settings.
    """
    path = settings.cell_dir / "bench.json"
    if not path.is_file():
        return
    saved, now = json.loads(path.read_text()), json.loads(json.dumps(settings.identity()))
    saved.setdefault("racing", "off")  # cells made before racing scored every candidate on every image
    saved.setdefault("confirm", 0)  # and kept the best proxy accuracy
    if saved != now:
        differences = _differences(saved, now)
        changed = ", ".join(f"{key} {old!r}, now {new!r}" for key, old, new in differences)
        hint = ""
        if any(key.startswith("env.proxy.calibration") for key, _, _ in differences):
            hint = f" (--calibration-images {calibration_image_count(saved['env'].get('proxy', {}))} for these cells)"
        elif any(key == "confirm" for key, _, _ in differences):
            hint = f" (--confirm {saved['confirm']} for these cells)"
        raise ConfigError(f"{settings.cell_dir} holds cells made with other settings ({changed}); rerun with the "
                          f"same options{hint} to resume, or pass another --name or --out")


def _differences(saved: Any, now: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, value now) of every leaf where two JSON values differ."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in _differences(saved.get(k), now.get(k), f"{key}.{k}" if key else str(k))]
    return [] if saved == now else [(key, saved, now)]


def check_cells(settings: BenchSettings, exp: Experiment) -> None:
    """Build every (budget, method) searcher once on ``exp`` so that an impossible budget or a bad option fails
    before any cell runs."""
    for budget in settings.budgets:
        for spec in settings.methods:
            settings.search_settings(budget, spec, 0, units=len(exp.space)).searcher(exp)


def run_bench(settings: BenchSettings, progress: bool = True, storage: str | None = None) -> list[dict[str, Any]]:
    """Run every missing cell (saving each as it finishes); returns every cell of the matrix that exists.

    Several processes may run the same benchmark at once: each claims a cell before running it, and
    skips cells another live process holds or has finished; with a ``storage`` URL, through the storage.
    """
    settings.check()
    check_identity(settings)
    prepare_output_dir(settings.out, new=False)
    _write_json(settings.cell_dir / "bench.json", settings.identity())
    study = bench_study(settings, storage)
    if study is not None:
        _run_shared(settings, study, progress)
        return finished_cells(settings, study)
    todo = [c for c in settings.cells() if not settings.cell_path(c[1], c[2], c[0]).is_file()]
    best: dict[str, float] = {}
    with Progress(len(settings.cells()), "bench", "cell", progress, initial=len(settings.cells()) - len(todo)) as bar:
        for seed, budget, spec in todo:
            path = settings.cell_path(budget, spec, seed)
            with claim(path) as mine:
                if not mine or path.is_file():  # another process runs it, or has just finished it
                    continue
                bar.set_description(f"bench {spec} {budget} seed {seed}")
                cell = run_cell(settings, budget, spec, seed, progress)
                _write_json(path, cell)
            best[budget] = max(best.get(budget, 0.0), cell["report_acc"])
            bar.set_postfix(", ".join(f"best {b} {100 * a:.2f}%" for b, a in best.items()))
            bar.update()
    return finished_cells(settings)


def bench_study(settings: BenchSettings, storage: str | None) -> Any:
    """The study through which processes on many machines share the matrix (None without a storage URL).

    Raises:
        ConfigError: if the storage cannot be reached, or its study was started with other settings.
    """
    if storage is None:
        return None
    study = open_study(open_storage(storage), f"bench-{settings.title}")
    bind_settings(study, settings.identity())
    return study


def _run_shared(settings: BenchSettings, study: Any, progress: bool) -> None:
    """Claim the matrix's cells from the study until none waits; a cell this folder holds already is recorded
    from its file."""
    enqueue_tasks(study, {_cell_task(budget, spec, seed): ({}, {"cell": [seed, budget, spec]})
                          for seed, budget, spec in settings.cells()})

    def work(trial: Any) -> float:
        seed, budget, spec = trial.user_attrs["cell"]
        path = settings.cell_path(budget, spec, seed)
        cell = json.loads(path.read_text()) if path.is_file() else run_cell(settings, budget, spec, seed, progress)
        _write_json(path, cell)
        trial.set_user_attr("result", json.loads(json.dumps(cell, default=float)))
        return float(cell["report_acc"])

    with Progress(len(settings.cells()), "bench", "cell", progress) as bar:
        while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            claim_task(study, work, tasks_only=True)
            bar.set(sum(counted(t) for t in study.get_trials(deepcopy=False)))


def _cell_task(budget: str, spec: str, seed: int) -> str:
    return f"{budget} {spec} seed {seed}"


def benchmark(settings: BenchSettings, *, report_only: bool = False, progress: bool = True,
              command: list[str] | None = None, storage: str | None = None) -> tuple[list[Path], int]:
    """Run the matrix's missing cells (none with ``report_only``), then write the report from every finished cell.

    Args:
        settings: the benchmark.
        report_only: only rewrite the report from the cells already finished.
        progress: show progress bars.
        command: the command the report's header names (default: this process's, ``python script.py ...``).
        storage: an Optuna storage URL that processes on many machines share the matrix through; the report
            then holds every machine's finished cells.

    Returns:
        The files written (report, CSV, plots) and how many cells are finished.

    Raises:
        ConfigError: for settings that cannot run, cells made with other settings, or (``report_only``)
            no finished cell.
        BudgetError: for a budget the search space cannot reach.
    """
    from autoprune.bench.report import write_report

    settings.check()
    check_output_dir(settings.out, new=False)
    check_identity(settings)
    exp = dense_experiment(settings)
    if not report_only:
        check_cells(settings, exp)
        run_bench(settings, progress, storage)
    cells = finished_cells(settings, bench_study(settings, storage))
    if not cells:
        raise ConfigError(f"no finished cells in {settings.cell_dir}; run without --report-only first")
    scan_path = settings.cell_dir / "sensitivity-scan.json"
    scan_cost = json.loads(scan_path.read_text()) if scan_path.is_file() else None
    command = command or [Path(sys.executable).name, *sys.argv]
    return write_report(settings, cells, dense_baseline(settings, exp), scan_cost, command), len(cells)


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Claim the cell at ``path`` for this process with a ``.lock`` file holding host and pid.

    Yields False while another live process holds it. A lock left by a process of this host that is no
    longer running (killed mid-cell) is taken over; one from another host is trusted.
    """
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _holder_alive(lock):
                yield False
                return
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def _holder_alive(lock: Path) -> bool:
    try:
        host, pid = lock.read_text().split()
    except ValueError:  # being written by its holder, or left half-written long ago
        return time.time() - lock.stat().st_mtime < 60
    except OSError:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished_cells(settings: BenchSettings, study: Any = None) -> list[dict[str, Any]]:
    """The finished cells of the settings' matrix, in matrix order: saved in the cell folder, or recorded in the
    shared ``study`` by any machine."""
    shared = {} if study is None else {t.user_attrs["task"]: t.user_attrs["result"]
                                       for t in study.get_trials(deepcopy=False) if counted(t) and "result" in t.user_attrs}
    cells = []
    for seed, budget, spec in settings.cells():
        path = settings.cell_path(budget, spec, seed)
        if path.is_file():
            cells.append(json.loads(path.read_text()))
        elif _cell_task(budget, spec, seed) in shared:
            cells.append(shared[_cell_task(budget, spec, seed)])
    return cells


def run_cell(settings: BenchSettings, budget: str, spec: str, seed: int, progress: bool = True) -> dict[str, Any]:
    """Search once, then score, time and fine-tune the best policy; returns the cell's record."""
    exp = settings.search_settings(budget, spec, seed).experiment()
    search = settings.search_settings(budget, spec, seed, units=len(exp.space))
    if get_searcher(search.method).uses_sensitivity_scan(search.method_options):
        record_scan(settings, exp)  # made once, before the first cell that needs it, so its cost is known
    searcher = search.searcher(exp)
    start, cpu_start = time.perf_counter(), time.process_time()
    finished_at: dict[int, tuple[float, float]] = {}  # evaluation index -> (wall-clock, CPU) seconds since the start
    exp.evaluator.observers.append(lambda c: finished_at.setdefault(
        c.index, (time.perf_counter() - start, time.process_time() - cpu_start)))
    search_in_process(searcher, exp, progress, leave=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    result = searcher.result
    if result.best is None:
        raise ConfigError(f"{spec} found no policy within {budget} in {plural(settings.evals, 'evaluation')}")
    ranked = best_first((c for c in result.candidates if c.ok and c.meta.get("within_budget", False)),
                        lambda c: c.proxy_acc, lambda c: c.kept)
    confirmation = confirm(exp, [c.kept for c in ranked], search.confirm, search.confirm_images)
    best = ranked[confirmation.chosen] if confirmation is not None else result.best
    network = exp.evaluator.build(best.policy)
    cell: dict[str, Any] = {
        "format": CELL_FORMAT, "method": spec, "seed": seed, "budget": search.budget, "evals": result.evaluations,
        "distinct": sum(not c.cached for c in result.candidates),
        "neighbours": sum("neighbour_of" in c.meta for c in result.candidates),  # rl --on-repeat neighbour's
        "seconds": seconds, "proxy_acc": best.proxy_acc, "report_acc": exp.accuracy(network, "report"),
        "flops": best.flops, "dense_flops": exp.evaluator.cost.dense_flops, "params": best.params,
        "dense_params": count_params(exp.model), "kept": dict(best.kept),
        "channels": {u.name: u.channels for u in exp.space.units}, "curve": best_so_far(result.candidates),
        "curve_seconds": [round(finished_at.get(c.index, (seconds, 0))[0], 3) for c in result.candidates],
        "cpu_seconds": cpu_seconds,  # this process's CPU time: with one thread, not inflated by other load
        "curve_cpu_seconds": [round(finished_at.get(c.index, (0, cpu_seconds))[1], 3) for c in result.candidates],
        "racing": list(exp.evaluator.racing.stages) if searcher.racing else None,  # type: ignore[union-attr]
        "stopped": sum(c.stopped for c in result.candidates),
        "confirmation": confirmation.record() if confirmation is not None else None,
        "images_scored": sum(c.fidelity or 0 for c in result.candidates if not c.cached),
        "reference_ms_per_image": reference_speed(exp),
        "machine": machine_description(), "versions": library_versions(), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if settings.latency:
        cell["latency_ms"] = measure_latency(copy.deepcopy(network), exp.example_inputs, settings.device,
                                             threads=settings.threads)
    if settings.finetune_epochs:
        cell.update(finetune(exp, network, settings, seed))
    return cell


def reference_speed(exp: Experiment, images: int = REFERENCE_IMAGES) -> float:
    """CPU milliseconds per image of the dense network's forward passes on the proxy's first ``images`` (the
    fastest of three passes): the machine's speed when a cell was made, so that the seconds of cells made at
    different times, or beside different loads, can be compared."""
    proxy = exp.evaluator.proxy
    model = proxy.prepare(copy.deepcopy(exp.model), recalibrate=False)
    count = min(images, len(proxy))
    fastest = float("inf")
    for _ in range(3):
        start = time.process_time()
        proxy.correct(model, 0, count)
        fastest = min(fastest, time.process_time() - start)
    return 1000.0 * fastest / count


def best_so_far(candidates: list[Any]) -> list[float | None]:
    """Best proxy accuracy within the budget after each evaluation (None before the first)."""
    running, curve = None, []
    for c in candidates:
        if c.ok and c.meta.get("within_budget") and (running is None or c.proxy_acc > running):
            running = c.proxy_acc
        curve.append(running)
    return curve


def finetune(exp: Experiment, network: Any, settings: BenchSettings, seed: int) -> dict[str, Any]:
    """The same short fine-tune for every method, from the BN-recalibrated pruned network."""
    ft = FinetuneSettings(epochs=settings.finetune_epochs, train_images=settings.finetune_images, seed=seed)
    start = time.perf_counter()
    Finetuner(network, exp.split("calibration"), ft, augmentation_for(exp.config.dataset, exp.config.input_shape),
              device=settings.device).fit()
    return {"finetuned_acc": exp.accuracy(network, "report", recalibrate=False),
            "finetune_seconds": time.perf_counter() - start}


def record_scan(settings: BenchSettings, exp: Experiment) -> dict[str, Any]:
    """Run (or read) the sensitivity scan once per benchmark and save its cost beside the cells."""
    path = settings.cell_dir / "sensitivity-scan.json"
    if path.is_file():
        return json.loads(path.read_text())
    ratios = parse_ratios(DEFAULT_RATIOS)
    start = time.perf_counter()
    table = scan(exp.evaluator, ratios)
    seconds = time.perf_counter() - start
    record = {"ratios": DEFAULT_RATIOS, "evaluations": 1 + len(exp.space) * len(ratios),
              "seconds": seconds if table.evaluations else None}  # None: read from an earlier cache, cost unknown
    _write_json(path, record)
    return record


def dense_experiment(settings: BenchSettings) -> Experiment:
    """The benchmark's experiment (network, data, Evaluator), as every cell builds it."""
    return SearchSettings(env=settings.env, budget="1flops", device=settings.device, threads=settings.threads,
                          data_dir=settings.data_dir).experiment()


def dense_baseline(settings: BenchSettings, exp: Experiment | None = None) -> dict[str, Any]:
    """The dense network scored exactly like a candidate (same BN recalibration); cached beside the cells."""
    path = settings.cell_dir / "dense.json"
    if path.is_file():
        return json.loads(path.read_text())
    exp = exp or dense_experiment(settings)
    dense = copy.deepcopy(exp.model)
    record: dict[str, Any] = {
        "proxy_acc": exp.evaluator.proxy.score(copy.deepcopy(exp.model)).accuracy,
        "report_acc": exp.accuracy(dense, "report"), "flops": exp.evaluator.cost.dense_flops,
        "params": count_params(exp.model), "units": len(exp.space),
        "proxy_images": len(exp.evaluator.proxy), "calibration_images": sum(len(b) for b in exp.evaluator.proxy.calibration),
    }
    if settings.latency:
        record["latency_ms"] = measure_latency(dense, exp.example_inputs, settings.device, threads=settings.threads)
    _write_json(path, record)
    return record


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, default=float) + "\n")
