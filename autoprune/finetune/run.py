"""``autoprune finetune``: rebuild a policy's network, recover it, fine-tune it, report and save it.

The output folder holds ``checkpoint.pt`` (after every epoch, for ``--resume``), ``report.json`` and
``report.md`` (accuracy before and after, cost, per-epoch history) and the network in every deployment
format (:mod:`autoprune.export.artifacts`). Every input is checked before anything is written.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoprune.console import Progress, plural
from autoprune.core.cost import FLOPS_LABEL, count_params, fvcore_flops
from autoprune.core.policy import PolicyRecord
from autoprune.core.proxy import recalibrate_batchnorm
from autoprune.core.rebuild import kept_channels
from autoprune.core.reconstruct import Reconstructor
from autoprune.errors import ConfigError
from autoprune.experiment import Experiment
from autoprune.export.artifacts import check_onnx_available, save_network
from autoprune.finetune.augment import augmentation_for
from autoprune.finetune.trainer import Finetuner, FinetuneSettings, load_checkpoint
from autoprune.io import atomic_write_text, check_output_dir, prepare_output_dir
from autoprune.presets import RECOVERY_METHODS

CHECKPOINT_FILE = "checkpoint.pt"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@dataclass
class FinetuneJob:
    """What ``autoprune finetune`` is asked to do.

    Attributes:
        policy: the ``policy.json`` file.
        out_dir: the output folder; it must not exist or be empty, unless ``resume``.
        settings: the fine-tuning settings.
        recover: recovery before fine-tuning: ``bn`` (BatchNorm recalibration) or ``reconstruct``
            (AMC's least-squares reconstruction, keeping the dense BatchNorm statistics).
        resume: continue from ``out_dir/checkpoint.pt``.
        full_test: also report accuracy on the whole ``test`` split.
        onnx: also export ONNX.
        device: where to train and evaluate.
    """

    policy: Path
    out_dir: Path
    settings: FinetuneSettings = field(default_factory=FinetuneSettings)
    recover: str = "bn"
    resume: bool = False
    full_test: bool = False
    onnx: bool = False
    device: str = "cpu"

    @property
    def checkpoint(self) -> Path:
        """Where the per-epoch checkpoint is written."""
        return self.out_dir / CHECKPOINT_FILE

    def check(self) -> None:
        """Check every input that needs no network.

        Raises:
            ConfigError: for a bad setting or recovery method, a missing checkpoint with ``resume``,
                an output folder that is not empty without ``resume``, or missing ONNX packages.
        """
        self.settings.check()
        if self.recover not in RECOVERY_METHODS:
            raise ConfigError(f"unknown recovery {self.recover!r}; choose one of {', '.join(RECOVERY_METHODS)}")
        check_output_dir(self.out_dir, new=not self.resume, hint="pass another --out, or --resume to continue its run")
        if self.resume and not self.checkpoint.is_file():
            raise ConfigError(f"--resume: no checkpoint {str(self.checkpoint)!r}; run without --resume to start")
        if self.onnx:
            check_onnx_available()


def run_finetune(job: FinetuneJob, record: PolicyRecord, exp: Experiment, progress: bool = True) -> dict[str, Any]:
    """Rebuild, recover, fine-tune, measure and save the network of ``record``; returns the report.

    Args:
        job: the checked job.
        record: the policy (checked to fit ``exp``'s network).
        exp: the experiment of the policy's env (network, data, pruner).
        progress: show a progress bar per epoch.
    """
    job.check()
    prepare_output_dir(job.out_dir, new=False)
    started = time.perf_counter()
    kept = kept_channels(record, exp.space)
    network = exp.evaluator.pruner.prune(kept).to(job.device)
    splits = ["report", "test"] if job.full_test and exp.config.splits.get("report") != "test" else ["report"]
    state = load_checkpoint(job.checkpoint) if job.resume else None
    if state is not None:
        saved = state["extra"]
        if saved.get("recover") != job.recover:
            raise ConfigError(f"cannot resume: the checkpoint was made with --recover {saved.get('recover')}, "
                              f"not {job.recover}")
        before = dict(saved["before"])
        recover_s = float(saved["recover_s"])
        missing = [s for s in splits if s not in before]
        if missing:
            raise ConfigError(f"cannot resume with --full-test: the checkpoint has no accuracy before fine-tuning "
                              f"on {missing}")
    else:
        t = time.perf_counter()
        _recover(job.recover, network, kept, exp)
        recover_s = time.perf_counter() - t
        before = {s: exp.accuracy(network, s, recalibrate=False) for s in splits}

    history: list[dict[str, float]] = []
    if job.settings.epochs > 0:
        teacher = copy.deepcopy(exp.model) if job.settings.distill else None
        trainer = Finetuner(network, exp.split("calibration"), job.settings,
                            augmentation_for(exp.config.dataset, exp.config.input_shape), teacher, job.device)
        if state is not None:
            trainer.load_state_dict(state)
        extra = {"recover": job.recover, "before": before, "recover_s": recover_s}
        with Progress(job.settings.epochs, "fine-tune", "epoch", progress, leave=False, initial=trainer.epoch) as bar:
            def on_epoch(r: dict[str, float]) -> None:
                bar.set_postfix(f"loss {r['loss']:.3f}, train acc {100 * r['train_acc']:.1f}%")
                bar.update()

            history = trainer.fit(job.checkpoint, extra, on_epoch)
    after = {s: exp.accuracy(network, s, recalibrate=False) for s in splits}
    dense = {s: exp.accuracy(copy.deepcopy(exp.model), s, recalibrate=False) for s in splits}
    x = exp.example_inputs
    report = {
        "policy": str(job.policy), "env": exp.config.name, "model": exp.config.model, "weights": exp.weights_source,
        "recover": job.recover, "settings": asdict(job.settings), "device": job.device,
        "splits": {s: exp.config.splits.get(s, s) for s in splits},
        "dense_acc": dense, "before_acc": before, "after_acc": after,
        "flops": fvcore_flops(network.cpu(), x), "dense_flops": fvcore_flops(exp.model, x),
        "params": count_params(network), "dense_params": count_params(exp.model),
        "recover_seconds": round(recover_s, 3), "history": history,
        "seconds": round(time.perf_counter() - started, 3),
    }
    report["files"] = save_network(network, x, record, job.out_dir, job.onnx)
    atomic_write_text(job.out_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    atomic_write_text(job.out_dir / REPORT_MD, _markdown(report))
    return report


def _recover(method: str, network: torch.nn.Module, kept: dict[str, int], exp: Experiment) -> None:
    """Recover the freshly pruned network: BN recalibration, or reconstruction (dense BN statistics kept)."""
    calibration = exp.evaluator.proxy.calibration
    if method == "reconstruct":
        images = torch.cat(calibration) if calibration else torch.empty(0)
        Reconstructor(exp.model, exp.example_inputs, exp.space, exp.evaluator.pruner, images)(network, kept)
    else:
        recalibrate_batchnorm(network, calibration)


def _markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    recovery = {"bn": "BatchNorm recalibration", "reconstruct": "least-squares reconstruction (AMC)"}[report["recover"]]
    lines = [
        f"# Fine-tuning {report['model']} ({report['env']})", "",
        f"- policy: `{report['policy']}`; weights: {report['weights']}",
        f"- recovery before fine-tuning: {recovery} ({report['recover_seconds']:.2f} s)",
        f"- fine-tuning: {plural(s['epochs'], 'epoch')}, SGD lr {s['lr']} (cosine), momentum {s['momentum']}, weight decay "
        f"{s['weight_decay']}, batch {s['batch_size']}, "
        + (f"{s['train_images']} training images" if s["train_images"] else "all training images")
        + (f", distillation T={s['temperature']} weight {s['distill_weight']}" if s["distill"] else "")
        + f", seed {s['seed']}, device {report['device']}",
        "",
        "| split | dense | pruned, recovered | fine-tuned |",
        "|---|---:|---:|---:|",
    ]
    for role, name in report["splits"].items():
        lines.append(f"| {role} (`{name}`) | {100 * report['dense_acc'][role]:.2f}% | "
                     f"{100 * report['before_acc'][role]:.2f}% | {100 * report['after_acc'][role]:.2f}% |")
    lines += [
        "",
        f"{FLOPS_LABEL}: {report['flops'] / 1e6:.3f}M of {report['dense_flops'] / 1e6:.3f}M dense "
        f"({report['flops'] / report['dense_flops']:.1%}); params {report['params'] / 1e6:.4f}M of "
        f"{report['dense_params'] / 1e6:.4f}M ({report['params'] / report['dense_params']:.1%})",
        "",
    ]
    if report["history"]:
        lines += ["| epoch | loss | train accuracy | lr at end | seconds |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['epoch']} | {r['loss']:.4f} | {100 * r['train_acc']:.2f}% | {r['lr']:.2e} | {r['seconds']:.1f} |"
                  for r in report["history"]]
        lines.append("")
    lines += ["Files: " + ", ".join(f"`{f}` ({k})" for k, f in report["files"].items()), ""]
    return "\n".join(lines)
