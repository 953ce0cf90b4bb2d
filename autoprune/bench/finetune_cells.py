"""Fine-tuning cells: one pruned network (a policy's kept channels) fine-tuned with one recipe and seed, its
accuracy measured after every epoch, saved as one JSON file.

The fine-tuning and proxy-fidelity studies (:mod:`autoprune.bench.studies.finetune`,
:mod:`autoprune.bench.studies.proxy_fidelity`) are lists of such cells. A finished cell is never run again, so a
stopped study resumes where it stopped; processes (``--jobs``, or several commands on one folder) claim cells with
the benchmark's lock files (:func:`autoprune.bench.harness.claim`). Every cell rebuilds its network from the dense
weights, recalibrates BatchNorm (the accuracy "before"), then trains with
:class:`~autoprune.finetune.trainer.Finetuner` on the env's calibration split (CIFAR-10: the whole train split).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.bench.harness import claim
from autoprune.bench.machine import library_versions, machine_description
from autoprune.console import Progress
from autoprune.core.cost import fvcore_flops
from autoprune.core.proxy import predict, recalibrate_batchnorm
from autoprune.core.reconstruct import Reconstructor
from autoprune.errors import AutopruneError, ConfigError
from autoprune.experiment import Experiment, build_experiment
from autoprune.finetune.augment import augmentation_for
from autoprune.finetune.trainer import Finetuner, FinetuneSettings, load_checkpoint, save_checkpoint
from autoprune.io import atomic_write_text
from autoprune.presets import EnvConfig
from autoprune.zoo.images import ImageSet, cache_dir

CELL_FORMAT = 1
TEACHER_CACHE = "teacher-logits"
"""Folder under :func:`~autoprune.zoo.images.cache_dir` where distillation cells keep the teacher's logits of each
(seed, epoch), computed by the first cell of a seed and read by the others (:mod:`autoprune.finetune.teacher`)."""
PROXIES = ("proxy_acc", "proxy_acc_250", "agreement", "reconstruct_acc")
"""The proxies a fidelity cell measures before fine-tuning: BN-recalibrated accuracy on the proxy images and on
their first 250 (racing's first stage), top-1 agreement with the dense network, and accuracy after least-squares
reconstruction (dense BatchNorm statistics kept)."""


@dataclass(frozen=True)
class CellSpec:
    """One network to fine-tune.

    Attributes:
        name: the cell's file name without ``.json``.
        kept: channels kept per unit (every unit of the space).
        settings: the fine-tuning recipe and seed.
        meta: what the study records about where the policy came from (method, search seed, source file...).
        proxies: also measure :data:`PROXIES` before fine-tuning.
    """

    name: str
    kept: Mapping[str, int]
    settings: FinetuneSettings
    meta: Mapping[str, Any] = field(default_factory=dict)
    proxies: bool = False


class CellRunner:
    """Runs cells on one experiment (network, data, pruner) built once per process.

    Args:
        config: the env (its weights resolved).
        device: where to fine-tune and score (``cpu`` or ``cuda``).
    """

    def __init__(self, config: EnvConfig, device: str = "cpu") -> None:
        self.device = device
        torch.backends.cudnn.benchmark = device.startswith("cuda")  # fixed shapes: let cuDNN pick its fastest kernels
        self.exp: Experiment = build_experiment(config, device=device)
        self.train = _on(self.exp.split("calibration"), device)
        self.report = self.exp.split("report").batch(slice(None), device)
        self.test = self.exp.split("test").batch(slice(None), device)
        self.dense_report = self.accuracy(copy.deepcopy(self.exp.model), self.report)
        self.dense_test = self.accuracy(copy.deepcopy(self.exp.model), self.test)
        self._reconstructor: Reconstructor | None = None

    def accuracy(self, network: nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Top-1 accuracy of ``network`` (as it is, eval mode) on a loaded split."""
        images, labels = split
        network = network.to(self.device)
        return (predict(network, images, 500) == labels).float().mean().item()

    def run(self, spec: CellSpec, checkpoint: Path | None = None) -> dict[str, Any]:
        """Fine-tune the cell's network; its record (accuracy per epoch, before and after, seconds).

        With ``checkpoint``, the state after every epoch is saved there, and a run that finds one continues from it
        (the same epochs, order and augmentation as without the interruption); the file is removed at the end.
        """
        started = time.perf_counter()
        exp = self.exp
        network = exp.evaluator.pruner.prune(dict(spec.kept)).to(self.device)
        trainer = Finetuner(network, self.train, spec.settings,
                            augmentation_for(exp.config.dataset, exp.config.input_shape),
                            copy.deepcopy(exp.model) if spec.settings.distill else None, self.device,
                            teacher_cache=cache_dir() / TEACHER_CACHE)
        if checkpoint is not None and checkpoint.is_file():
            state = load_checkpoint(checkpoint)
            trainer.load_state_dict(state)
            record = dict(state["extra"])
            if len(record["epochs"]) < trainer.epoch:  # saved before its accuracy was: the weights are that epoch's
                record["epochs"].append({**trainer.history[-1], "report_acc": self.accuracy(network, self.report)})
        else:
            record = {"format": CELL_FORMAT, "name": spec.name, **dict(spec.meta), "kept": dict(spec.kept),
                      "settings": asdict(spec.settings), "device": self.device, "seconds_before": 0.0}
            if spec.proxies:
                record.update(self.proxies(spec.kept))
            recalibrate_batchnorm(network, exp.evaluator.proxy.calibration)
            record["flops"] = fvcore_flops(copy.deepcopy(network).cpu(), exp.example_inputs)
            record["dense_flops"] = exp.evaluator.cost.dense_flops
            record["before_report_acc"] = self.accuracy(network, self.report)
            record["epochs"] = []
        read_before = record.get("teacher_batches_read", 0)
        while trainer.epoch < spec.settings.epochs:
            epoch = trainer.train_epoch()
            record["epochs"].append({**epoch, "report_acc": self.accuracy(network, self.report)})
            if trainer.teacher is not None:  # batches whose teacher logits were read back instead of computed
                record["teacher_batches_read"] = read_before + trainer.teacher.read
            if checkpoint is not None:
                elapsed = record["seconds_before"] + time.perf_counter() - started
                save_checkpoint(checkpoint, trainer.state_dict({**record, "seconds_before": elapsed}))
        epochs = record.pop("epochs")
        record.update({
            "epochs": epochs, "report_acc": epochs[-1]["report_acc"] if epochs else record["before_report_acc"],
            "test_acc": self.accuracy(network, self.test), "dense_report_acc": self.dense_report,
            "dense_test_acc": self.dense_test,
            "seconds": record.pop("seconds_before") + time.perf_counter() - started,
            "machine": machine_description(), "versions": library_versions(),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        })
        return record

    def proxies(self, kept: Mapping[str, int]) -> dict[str, float]:
        """:data:`PROXIES` of the network that keeps ``kept`` (each from the dense weights)."""
        exp, proxy = self.exp, self.exp.evaluator.proxy
        prepared = proxy.prepare(exp.evaluator.pruner.prune(dict(kept)))
        hits = proxy.correct(prepared)
        dense = predict(copy.deepcopy(exp.model).to(proxy.device), proxy.images, proxy.batch_size)
        agreement = (predict(prepared, proxy.images, proxy.batch_size) == dense).float().mean().item()
        if self._reconstructor is None:  # on the CPU, where the dense network lives
            self._reconstructor = Reconstructor(exp.model, exp.example_inputs, exp.space, exp.evaluator.pruner,
                                                torch.cat(proxy.calibration).cpu())
        rebuilt = exp.evaluator.pruner.prune(dict(kept))
        self._reconstructor(rebuilt, dict(kept))
        reconstructed = proxy.correct(proxy.prepare(rebuilt, recalibrate=False)).float().mean().item()
        return {"proxy_acc": hits.float().mean().item(), "proxy_acc_250": hits[:250].float().mean().item(),
                "agreement": agreement, "reconstruct_acc": reconstructed}


def _on(images: ImageSet, device: str) -> ImageSet:
    """The set with its tensors on ``device`` (the whole train split fits on a GPU; batches then stay there)."""
    if device == "cpu":
        return images
    return ImageSet(images.images.to(device), images.labels.to(device), images.mean, images.std, images.scale)


def cell_path(folder: Path, spec: CellSpec) -> Path:
    """Where the cell's record is saved."""
    return folder / f"{spec.name}.json"


def checkpoint_path(folder: Path, spec: CellSpec) -> Path:
    """Where an unfinished cell keeps its state after every epoch (removed once the cell is saved)."""
    return folder / f"{spec.name}.ckpt.pt"


def finished(folder: Path, specs: Sequence[CellSpec]) -> list[dict[str, Any]]:
    """The records of the cells already saved in ``folder``, in the order of ``specs``."""
    return [json.loads(cell_path(folder, s).read_text()) for s in specs if cell_path(folder, s).is_file()]


def run_cells(config: EnvConfig, specs: Sequence[CellSpec], folder: Path, device: str = "cpu", jobs: int = 1,
              stop_after: float | None = None, progress: bool = True, label: str = "fine-tune cells") -> int:
    """Run every cell of ``specs`` not yet saved in ``folder`` on ``jobs`` processes; returns how many are saved.

    Args:
        config: the env of every cell.
        specs: the cells, in the order they should be claimed.
        folder: where records are saved (and claimed with lock files).
        device: where to fine-tune.
        jobs: processes (each builds the experiment once; one CPU thread each when more than one on the CPU).
        stop_after: claim no new cell after this many seconds (cells already started finish).
        progress: show a bar of saved cells.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    folder.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not cell_path(folder, s).is_file()]
    deadline = None if stop_after is None else time.time() + stop_after
    if todo:
        if jobs == 1:
            _work(config, todo, folder, device, deadline, None, progress)
        else:
            context = multiprocessing.get_context("spawn")
            threads = 1 if device == "cpu" else None
            workers = [context.Process(target=_work, args=(config, todo, folder, device, deadline, threads, progress))
                       for _ in range(min(jobs, len(todo)))]
            for w in workers:
                w.start()
            _watch(workers, folder, specs, progress, label)
            failed = [w.exitcode for w in workers if w.exitcode != 0]
            if failed:
                raise RuntimeError(f"{len(failed)} fine-tuning process(es) failed (exit codes {failed})")
    return len(finished(folder, specs))


def _watch(workers: list[multiprocessing.process.BaseProcess], folder: Path, specs: Sequence[CellSpec],
           progress: bool, label: str) -> None:
    done = len(finished(folder, specs))
    with Progress(len(specs), label, "cell", progress, initial=done) as bar:
        while any(w.is_alive() for w in workers):
            time.sleep(2)
            now = len(finished(folder, specs))
            bar.update(now - done)
            done = now
    for w in workers:
        w.join()


def _work(config: EnvConfig, specs: Sequence[CellSpec], folder: Path, device: str, deadline: float | None,
          threads: int | None, verbose: bool) -> None:
    """One process: claim and run cells until none is left (or the deadline has passed); a line per cell when
    ``verbose``."""
    if threads is not None:
        torch.set_num_threads(threads)
    runner: CellRunner | None = None
    for spec in specs:
        if deadline is not None and time.time() > deadline:
            return
        path = cell_path(folder, spec)
        with claim(path) as mine:
            if not mine or path.is_file():
                continue
            runner = runner or CellRunner(config, device)
            record = runner.run(spec, checkpoint_path(folder, spec))
            atomic_write_text(path, json.dumps(record, indent=1) + "\n")
            checkpoint_path(folder, spec).unlink(missing_ok=True)
            if verbose:
                print(f"[{os.getpid()}] {spec.name}: {100 * record['report_acc']:.2f}% after {len(record['epochs'])} "
                      f"epochs, {record['seconds']:.0f} s", flush=True)


def only_cells(specs: Sequence[CellSpec], only: str | None) -> list[CellSpec]:
    """The cells ``only`` names (comma-separated cell names), in that order; every cell when ``only`` is None.

    Raises:
        ConfigError: naming a cell the study does not have.
    """
    if only is None:
        return list(specs)
    by_name = {s.name: s for s in specs}
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise ConfigError(f"--only: no cell named {', '.join(unknown) or repr(only)} in this study; its cells are "
                          f"{', '.join(sorted(by_name)[:6])}{', ...' if len(by_name) > 6 else ''}")
    return [by_name[n] for n in dict.fromkeys(names)]


def add_study_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    """The options every fine-tuning study takes: the recipe, where it runs, and its output."""
    parser.add_argument("--epochs", type=int, default=epochs, help=f"fine-tuning epochs (default {epochs})")
    parser.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate, cosine to 0 (default 0.01)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, help="train on a fixed random subset of this many images "
                        "(default: the whole train split)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="fine-tuning processes (default 1)")
    parser.add_argument("--stop-after", type=float, help="claim no new cell after this many seconds")
    parser.add_argument("--only", metavar="CELLS", help="run only these cells, in this order (comma-separated names "
                        "as in the cell folder, e.g. uniform-kd-s0,sac-kd-s0); the report still reads every finished cell")
    parser.add_argument("--out", default="results/benchmarks", help="folder of the report")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished cells only")
    parser.add_argument("--quiet", action="store_true")


def study_recipe(args: argparse.Namespace) -> FinetuneSettings:
    """The recipe the study options name (seed and distillation are set per cell).

    Raises:
        ConfigError: naming the first bad value.
    """
    recipe = FinetuneSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, train_images=args.train_images)
    recipe.check()
    return recipe


def run_study(run: Callable[[argparse.Namespace, list[str] | None], int], args: argparse.Namespace,
              argv: list[str] | None) -> int:
    """Run a study's main body; a bad input is one line on stderr and exit status 2."""
    try:
        return run(args, argv)
    except AutopruneError as e:
        print(f"autoprune: error: {e}", file=sys.stderr)
        return 2
