"""The ``autoprune`` command line: search, evaluate, apply and list.

Every user error prints one line (``autoprune: error: ...``) and exits with status 2; nothing is
written before the inputs have been checked.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from autoprune.console import Progress, plural, show_status
from autoprune.core.budget import Budget
from autoprune.core.cost import (
    FLOPS_LABEL,
    LatencySettings,
    count_params,
    fvcore_flops,
    measure_latency,
    resolve_device,
)
from autoprune.core.policy import PolicyRecord
from autoprune.core.prune import CRITERIA
from autoprune.core.rebuild import check_fits, kept_channels, policy_file
from autoprune.errors import AutopruneError, ConfigError, PolicyError
from autoprune.experiment import DataOptions, Experiment, build_experiment, configure
from autoprune.presets import DEFAULT_ENV, EnvConfig, env_names, space_names
from autoprune.run.confirm import DEFAULT_CANDIDATES as CONFIRM_CANDIDATES
from autoprune.run.confirm import DEFAULT_IMAGES as CONFIRM_IMAGES
from autoprune.run.interrupt import StopRequested
from autoprune.search import SAMPLERS, SEARCHERS, get_searcher, methods_accepting, methods_where
from autoprune.zoo.models import zoo_names

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errors of a full disk (or quota): a command stops with one line and status 1."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--budget -0.5flops`` as ``--budget=-0.5flops`` (and ``--lr -1e-3``, any option followed by a negative
    amount), so that the option's own check, not argparse ("expected one argument"), answers the value."""
    out = list(argv)
    for i in range(len(out) - 2, -1, -1):
        if out[i].startswith("--") and out[i] != "--" and "=" not in out[i] and re.match(r"-\.?\d", out[i + 1]):
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}"]
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", help=f"env preset name or YAML file (default: the run's own env for a policy of a run, "
                   f"else {DEFAULT_ENV}; presets: {', '.join(env_names())})")
    p.add_argument("--model", metavar="SPEC", help="the network: a zoo name (resnet20..resnet110, digits-cnn), "
                   "torchvision:NAME, timm:NAME (pip install 'autoprune[timm]'), path/to/file.py:CALLABLE or "
                   "package.module:CALLABLE (a class or function returning an nn.Module; loading a file RUNS ITS CODE: "
                   "only files you trust)")
    p.add_argument("--model-args", metavar="K=V,...", help="keyword arguments of the model's callable, values read as "
                   "YAML scalars: dim=256,depth=8,patch_size=4")
    p.add_argument("--weights", help="checkpoint file (path, or name inside AUTOPRUNE_WEIGHTS_DIR): a state dict, or a "
                   "dict holding one under state_dict/model/net/module (module., model., _orig_mod. prefixes are "
                   "stripped); or a torchvision weights name such as IMAGENET1K_V1")
    p.add_argument("--data", metavar="FOLDER", help="your image folder: train/ and val/ (or test/), one subfolder per "
                   "class; BatchNorm calibration on train/, the proxy and the report on two fixed halves of val/")
    p.add_argument("--input-size", type=int, metavar="N", help="resize and centre-crop images to N x N (default: the "
                   "model's preprocessing for torchvision/timm weights, else the images' own size)")
    p.add_argument("--mean", metavar="A,B,C", help="normalisation mean (default: the model's, else ImageNet's)")
    p.add_argument("--std", metavar="A,B,C", help="normalisation std (default: the model's, else ImageNet's)")
    p.add_argument("--save-env", metavar="FILE.yaml", help="also write the resolved settings as an env preset file "
                   "(rerun with --env FILE.yaml)")
    p.add_argument("--data-dir", help="folder holding cifar10-jpeg/ or cifar-10-batches-py/ (default AUTOPRUNE_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="download missing public data (needs internet)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints with weights_only=False (runs pickled code: only for files you trust)")
    p.add_argument("--space", help=f"search-space preset or YAML file ({', '.join(space_names())})")
    p.add_argument("--criterion", choices=CRITERIA, help="channel-selection criterion (default: the preset's, l1)")
    p.add_argument("--proxy-images", type=int, help="number of proxy-split images to score on")
    p.add_argument("--proxy-forward", choices=("fast", "plain"), help="how candidates are scored: fast (default: "
                   "channels-last, BatchNorm folded, inference mode) or plain (as before racing, to compare)")
    p.add_argument("--report-images", type=int, help="number of report-split images (--data; default: all of its half)")
    p.add_argument("--calibration-images", type=int, help="number of train images for BatchNorm calibration (--data)")
    p.add_argument("--device", default="cpu", help="device for evaluation and latency (cpu, cuda, cuda:1)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing latency (default 1)")


def build_parser() -> argparse.ArgumentParser:
    """The ``autoprune`` argument parser."""
    parser = _Parser(prog="autoprune", description="Find per-layer channel pruning policies under a budget.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="search a pruning policy that meets a budget")
    _add_common(s)
    s.add_argument("--budget", help="required: e.g. 0.5flops, 0.6params, 0.7latency, 40MFLOPs, 0.3Mparams, 2.5ms")
    s.add_argument("--method", default="random", help=f"search method: {', '.join(SEARCHERS)} (default random)")
    s.add_argument("--evals", "--episodes", dest="evals", type=int, default=100,
                   help="number of evaluations (default 100); for the rl methods, episodes (one evaluation each)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="run directory (default results/runs/<time>-<env>-<method>)")
    s.add_argument("--latency", action="store_true", help="measure every candidate's latency (implied by a latency budget)")
    s.add_argument("--sampler", help=f"Optuna sampler: {', '.join(SAMPLERS)} (default tpe; "
                   f"{', '.join(methods_accepting('sampler'))})")
    s.add_argument("--racing", help="score candidates in stages and stop those that cannot beat the best so far: on "
                   "(default: a quarter, half, all of the proxy images), off, or image counts such as 250,500 "
                   f"({', '.join(methods_where('races'))})")
    s.add_argument("--confirm", type=int, default=CONFIRM_CANDIDATES, metavar="K",
                   help=f"final choice: score the best K candidates again on proxy-split images the search never saw "
                   f"and keep the best there (default {CONFIRM_CANDIDATES}; 0: the best proxy accuracy)")
    s.add_argument("--confirm-images", type=int, default=CONFIRM_IMAGES, metavar="N",
                   help=f"most unseen images for --confirm (default {CONFIRM_IMAGES})")
    s.add_argument("--objectives", default="acc", help="acc (default), or acc,flops / acc,latency / acc,params for a Pareto front")
    s.add_argument("--storage", help="Optuna storage URL shared by workers: sqlite:///f.db, postgresql://..., mysql://..., "
                   "or a journal file (f.log); default: study.db in the run directory")
    s.add_argument("--study-name", help="study name in the storage (default <env>-<budget>-<method>)")
    s.add_argument("--workers", type=int, default=1,
                   help=f"local worker processes on one study ({', '.join(methods_where('parallel'))})")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_method_options(s)
    s.set_defaults(func=cmd_search)

    e = sub.add_parser("evaluate", help="test accuracy, FLOPs, params and latency of a (pruned) network")
    _add_common(e)
    e.add_argument("--policy", help="policy.json, or a run directory holding one, to apply first (default: the dense network)")
    e.add_argument("--split", help="split to report on (default: the preset's report split; 'test' = all test images)")
    e.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="recalibrate BatchNorm first (default: only for a pruned network)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    a = sub.add_parser("apply", help="rebuild the pruned network of a policy and save it with torch.save")
    a.add_argument("policy", help="policy.json, or a run directory holding one")
    _add_common(a)
    a.add_argument("--out", required=True, help="output file, e.g. pruned.pt")
    a.add_argument("--state-dict", help="load these weights into the rebuilt network (state_dict.pt of autoprune "
                   "finetune); checked against the rebuilt shapes")
    a.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="recalibrate BatchNorm statistics before saving (default on, off with --state-dict)")
    a.set_defaults(func=cmd_apply)
    _add_finetune_export(sub)

    pk = sub.add_parser("pick", help="best recorded policy of a finished run under another budget, without searching")
    pk.add_argument("run", help="run directory")
    pk.add_argument("--budget", required=True, help="e.g. 0.4flops")
    pk.add_argument("--out", help="output folder (default RUN/pick-<budget>)")
    pk.set_defaults(func=cmd_pick)

    d = sub.add_parser("dashboard", help="inspect a run's study in optuna-dashboard")
    d.add_argument("run", help="run directory")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "0.0.0.0 serves every network the machine is on, to anyone who can reach it)")
    d.add_argument("--port", type=int, default=8080)
    d.set_defaults(func=cmd_dashboard)

    r = sub.add_parser("report", help="write the run directory (policy, trials.csv, summary, plots) of a study "
                       "shared by many machines")
    r.add_argument("--storage", required=True, help="the Optuna storage URL the workers shared, e.g. "
                   "postgresql://user:password@host:5432/db")
    r.add_argument("--study-name", required=True, help="the --study-name of the search")
    r.add_argument("--out", help="new run directory (default results/runs/<time>-<env>-report)")
    r.add_argument("--data-dir", help="this machine's data folder, if not the one the search recorded")
    r.add_argument("--device", help="evaluate the best policy on this device (default: the search's)")
    r.add_argument("--quiet", action="store_true", help="no stage lines")
    r.set_defaults(func=cmd_report)

    _add_sensitivity(sub)
    _add_bench(sub)
    ls = sub.add_parser("list", help="list env presets, search spaces, methods and models")
    ls.set_defaults(func=cmd_list)
    return parser


def _config(args: argparse.Namespace, record: PolicyRecord | None = None, policy: Path | None = None) -> EnvConfig:
    """The resolved configuration of a command: the env (given, the run's own for a policy of a run, or the
    default) with the command line's overrides; remembered for ``--save-env``."""
    from autoprune.zoo.models import parse_model_args

    env = args.env if args.env is not None else _run_env(policy) if policy is not None else None
    if env is None and args.data is None:
        env = DEFAULT_ENV
    config = configure(env, {
        "model": args.model, "model_args": parse_model_args(args.model_args) if args.model_args else None,
        "weights": args.weights, "data": args.data, "input_size": args.input_size,
        "mean": _triple(args.mean, "--mean"), "std": _triple(args.std, "--std"),
        "report_images": args.report_images, "calibration_images": args.calibration_images})
    if record is not None:
        if record.model != config.model:
            raise PolicyError(f"policy is for model {record.model} but env {config.name!r} builds {config.model}; "
                              f"pass --model {record.model} or the matching --env")
        config.search_space = record.search_space or config.search_space
        config.criterion = record.criterion
    config = configure(config, {"search_space": args.space or None, "criterion": args.criterion or None,
                                "proxy_images": args.proxy_images, "proxy_forward": args.proxy_forward})
    if getattr(args, "save_env", None):
        from autoprune.io import check_output_file

        check_output_file(args.save_env, flag="--save-env", example="my-env.yaml")  # before any work
    args.resolved_config = config
    return config


def _run_env(policy: Path) -> EnvConfig | None:
    """The env recorded by the run a policy file belongs to (its folder or the one above), if any."""
    from autoprune.run.directory import CONFIG_FILE, read_run_config

    for folder in (policy.parent, policy.parent.parent):
        if (folder / CONFIG_FILE).is_file():
            doc = read_run_config(folder)
            env = (doc.get("settings") or {}).get("env") or doc.get("env")
            if isinstance(env, dict):
                try:
                    return EnvConfig(**env)
                except TypeError:
                    return None
    return None


def _triple(text: str | None, flag: str) -> tuple[float, float, float] | None:
    """``0.5,0.5,0.5`` -> three floats (None when not given)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or (flag == "--std" and min(values) <= 0):
        raise ConfigError(f"{flag} takes three comma-separated numbers (one per colour channel{', each > 0' if flag == '--std' else ''}), "
                          f"got {text!r}")
    return values  # type: ignore[return-value]


def _save_env(args: argparse.Namespace) -> None:
    """Write ``--save-env`` once the command has succeeded (nothing is written for a command that failed)."""
    import yaml

    from autoprune.io import atomic_write_text, check_output_file

    config = getattr(args, "resolved_config", None)
    if getattr(args, "save_env", None) and config is not None:
        out = check_output_file(args.save_env, flag="--save-env", example="my-env.yaml")
        atomic_write_text(out, yaml.safe_dump(config.to_dict(), sort_keys=False))
        print(f"env preset written to {out} (rerun with --env {out})")


def _device(name: str) -> str:
    resolve_device(name)
    return name


def _experiment(args: argparse.Namespace, config: EnvConfig, latency: bool) -> Experiment:
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    device = _device(args.device)
    settings = LatencySettings(device=device, threads=args.threads) if latency else None
    options = DataOptions(args.data_dir, None, args.download, args.trust_checkpoint)
    return build_experiment(config, data=options, device=device, latency=settings)


def cmd_search(args: argparse.Namespace) -> int:
    """``autoprune search``: run a searcher and write the run directory."""
    from autoprune.run.search import SearchSettings, run_search

    if args.resume:
        return _resume(args.resume, progress=not args.quiet)
    if args.budget is None:
        raise ConfigError("--budget is required, e.g. --budget 0.5flops (or --resume RUN_DIR)")
    budget = Budget.parse(args.budget)
    get_searcher(args.method)
    config = _config(args)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    settings = SearchSettings(
        env=config.to_dict(), budget=str(budget), method=args.method, evals=args.evals, seed=args.seed,
        **({"sampler": args.sampler} if args.sampler else {}), objectives=args.objectives, storage=args.storage, study_name=args.study_name,
        workers=args.workers, latency=args.latency, device=_device(args.device), threads=args.threads,
        data_dir=args.data_dir, download=args.download, trust_checkpoint=args.trust_checkpoint,
        method_options=_method_options(args), latency_model=args.latency_model,
        **({"racing": args.racing} if args.racing else {}), confirm=args.confirm, confirm_images=args.confirm_images,
    )
    run_dir = run_search(settings, args.out, progress=not args.quiet)
    record = PolicyRecord.load(run_dir / "policy.json")
    _print_record(record)
    print(f"{plural(record.found_by['evaluations'], 'evaluation')} recorded in {run_dir / 'trials.csv'}; run directory: {run_dir}")
    return 0


def _add_method_options(s: argparse.ArgumentParser) -> None:
    """One flag per setting that some registered method declares; each applies only to the methods that take it."""
    from autoprune.core.latency_table import LATENCY_MODELS

    s.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped search in RUN_DIR with its recorded settings")
    s.add_argument("--latency-model", choices=LATENCY_MODELS, help="price a latency budget with the lookup table (lut) "
                   "or by timing each pruned network (measure); default: the method's preference "
                   f"(lut for {', '.join(m for m, c in SEARCHERS.items() if c.latency_model == 'lut')})")
    g = s.add_argument_group("method settings (each applies to the methods named after it)")
    seen: set[str] = {"--sampler"}  # a run setting of its own (config.yaml keeps it beside the method's options)
    for option in (o for cls in SEARCHERS.values() for o in cls.options):
        if option.cli_flag in seen:
            continue
        seen.add(option.cli_flag)
        g.add_argument(option.cli_flag, dest=_dest(option.cli_flag), type=option.type, choices=option.choices,
                       metavar=option.metavar, help=f"{option.help} ({', '.join(methods_accepting(option.name))})")


def _dest(flag: str) -> str:
    return "method_" + flag.removeprefix("--").replace("-", "_")


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method settings given on the command line, checked against what ``--method`` takes.

    Raises:
        ConfigError: for a setting the method does not take, naming the methods it applies to.
    """
    cls = get_searcher(args.method)
    given = {o.name: (o.cli_flag, getattr(args, _dest(o.cli_flag)) if o.cli_flag != "--sampler" else args.sampler)
             for c in SEARCHERS.values() for o in c.options}
    options: dict[str, Any] = {}
    for name, (flag, value) in given.items():
        if value is None:
            continue
        if not cls.accepts(name):
            raise ConfigError(f"{flag} applies to --method {', '.join(methods_accepting(name))}, not --method {args.method}")
        if flag != "--sampler":
            options[name] = value
    return options


def _add_sensitivity(sub: argparse._SubParsersAction) -> None:
    from autoprune.search.sensitivity_scan import DEFAULT_RATIOS

    p = sub.add_parser("sensitivity", help="proxy accuracy with one unit pruned at a time over a ratio grid (cached)")
    _add_common(p)
    p.add_argument("--ratios", default=DEFAULT_RATIOS, help=f"start:stop:step or a list such as 0.2,0.5,0.8 "
                   f"(default {DEFAULT_RATIOS})")
    p.add_argument("--out", help="output folder (default results/runs/<time>-<env>-sensitivity)")
    p.add_argument("--storage", help="Optuna storage URL (postgresql://..., or a journal file f.log) that several "
                   "commands of the same scan share: each point is scored once, by whichever is free")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sensitivity)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """``autoprune sensitivity``: scan (or read from the cache) and write ``sensitivity.csv`` and plots."""
    from autoprune.run.directory import new_run_dir, write_config
    from autoprune.search.sensitivity_scan import (
        parse_ratios,
        scan,
        summary_line,
        write_outputs,
    )
    from autoprune.trials.study import open_storage

    ratios = parse_ratios(args.ratios)
    config = _config(args)
    exp = _experiment(args, config, latency=False)
    storage = open_storage(args.storage) if args.storage else None
    out = new_run_dir(args.out, config.name, "sensitivity")
    with Progress(None, "sensitivity", "eval", not args.quiet, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.set_total(total)
            bar.set(done)

        table = scan(exp.evaluator, ratios, on_point=progress, storage=storage)
    write_config(out, {"command": "sensitivity", "env": config.to_dict(), "ratios": list(ratios), "cache": str(table.path)})
    files = write_outputs(table, out, config.name)
    print(summary_line(table))
    source = plural(table.evaluations, "evaluation") if table.evaluations else f"read from the cache {table.path}"
    print(f"{plural(len(exp.space), 'unit')} x {plural(len(ratios), 'ratio')} ({source}); wrote {', '.join(str(f) for f in files)}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from autoprune.bench.settings import DEFAULT_METHODS

    b = sub.add_parser("bench", help="compare search methods on one env: same Evaluator, budgets and evaluations, "
                       "mean ± std over seeds; writes a report, a CSV and plots")
    _add_common(b)
    b.add_argument("--budgets", default="0.3,0.5,0.7", help="comma list; bare numbers are FLOPs fractions "
                   "(default 0.3,0.5,0.7)")
    b.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma list, optuna as optuna-<sampler> "
                   f"(default {','.join(DEFAULT_METHODS)})")
    b.add_argument("--seeds", type=int, help=f"seeds per stochastic method (default 3; --quick {QUICK['seeds']})")
    b.add_argument("--evals", type=int, help=f"evaluations per cell (default 300; --quick {QUICK['evals']})")
    b.add_argument("--finetune-epochs", type=int, help=f"short fine-tune of every best policy (default 0; --quick "
                   f"{QUICK['finetune_epochs']})")
    b.add_argument("--finetune-images", type=int, help="fine-tune on this many calibration images (default all; "
                   f"--quick {QUICK['finetune_images']})")
    b.add_argument("--no-latency", action="store_true", help="do not time the best policies")
    b.add_argument("--racing", default="on", help="racing methods race their candidates (on, default: a quarter, half, "
                   "all of the proxy images; or image counts such as 250,1000) or score every candidate on every image "
                   "(off; one method: <spec>@full, e.g. random@full)")
    b.add_argument("--confirm", type=int, default=CONFIRM_CANDIDATES, metavar="K",
                   help=f"each cell's final choice among its best K candidates on unseen proxy-split images (default "
                   f"{CONFIRM_CANDIDATES}; 0: the best proxy accuracy, as cells made before it)")
    b.add_argument("--name", help="report name (default: the env's name)")
    b.add_argument("--out", default="results/benchmarks", help="folder of the report and its cells "
                   "(default results/benchmarks)")
    b.add_argument("--storage", help="Optuna storage URL (postgresql://..., or a journal file f.log) through which "
                   "bench commands on many machines share the matrix: each cell runs once, and the report holds "
                   "every machine's cells")
    b.add_argument("--quick", action="store_true", help="CI-sized run: few evaluations, one seed, a tiny fine-tune")
    b.add_argument("--report-only", action="store_true", help="write the report from the finished cells only")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_bench)


QUICK = {"seeds": 1, "evals": 6, "finetune_epochs": 1, "finetune_images": 256}
FULL = {"seeds": 3, "evals": 300, "finetune_epochs": 0, "finetune_images": None}


def cmd_bench(args: argparse.Namespace) -> int:
    """``autoprune bench``: run the missing cells of a method x budget x seed matrix, then write the report."""
    from autoprune.bench.harness import benchmark
    from autoprune.bench.settings import BenchSettings, parse_budgets, parse_methods

    sizes = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k] for k in FULL}
    settings = BenchSettings(
        env=_config(args).to_dict(), budgets=parse_budgets(args.budgets),
        methods=parse_methods(args.methods), **sizes,
        latency=not args.no_latency, device=_device(args.device), threads=args.threads, data_dir=args.data_dir,
        name=args.name, out=args.out, racing=args.racing, confirm=args.confirm,
    )
    command = ["autoprune", *(a for a in args.argv if a not in ("--report-only", "--quiet"))]  # the one that runs the cells
    files, finished = benchmark(settings, report_only=args.report_only, progress=not args.quiet, command=command,
                                storage=args.storage)
    print(f"{finished} of {plural(len(settings.cells()), 'cell')} finished; wrote {', '.join(str(f) for f in files)}")
    return 0


def _resume(run: str, progress: bool) -> int:
    from autoprune.run.search import read_settings, run_search

    run_dir = run_search(read_settings(run, "--resume"), run, progress=progress)
    record = PolicyRecord.load(run_dir / "policy.json")
    _print_record(record)
    print(f"{plural(record.found_by['evaluations'], 'evaluation')} recorded in {run_dir / 'trials.csv'}; run directory: {run_dir}")
    return 0


def _print_record(record: PolicyRecord) -> None:
    m = record.metrics
    print(f"best policy ({record.found_by['method']}, {record.budget}): proxy accuracy {100 * m['proxy_acc']:.2f}%, "
          f"report accuracy {100 * m['report_acc']:.2f}%, {FLOPS_LABEL} {m['flops'] / 1e6:.3f}M, "
          f"params {m['params'] / 1e6:.4f}M" + (f", latency {m['latency_ms']:.3f} ms" if "latency_ms" in m else ""))


def cmd_pick(args: argparse.Namespace) -> int:
    """``autoprune pick``: the best recorded policy of a finished run under another budget."""
    from autoprune.run.search import pick

    out_dir, record = pick(args.run, args.budget, args.out)
    _print_record(record)
    print(f"written to {out_dir}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``autoprune dashboard``: serve optuna-dashboard on a run's study."""
    from autoprune.run.directory import read_run_config

    settings = read_run_config(args.run).get("settings")
    storage = settings.get("storage") if isinstance(settings, dict) else None
    url = storage or f"sqlite:///{(Path(args.run) / 'study.db').resolve()}"
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed; pip install 'autoprune[dashboard]'") from None
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ for {url} (Ctrl-C to stop)")
    from autoprune.trials.study import open_storage

    optuna_dashboard.run_server(open_storage(url, Path(args.run)), host=args.host, port=args.port)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``autoprune report``: the run directory of a shared study, written on this machine."""
    from autoprune.run.report import report

    run_dir, record = report(args.storage, args.study_name, args.out, data_dir=args.data_dir,
                             device=_device(args.device) if args.device else None)
    _print_record(record)
    print(f"{plural(record.found_by['evaluations'], 'evaluation')} recorded in {run_dir / 'trials.csv'}; "
          f"run directory: {run_dir}")
    return 0


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def _load_policy(args: argparse.Namespace) -> tuple[PolicyRecord, EnvConfig, Experiment]:
    policy = policy_file(args.policy)
    record = PolicyRecord.load(policy)
    config = _config(args, record, policy)
    exp = _experiment(args, config, latency=False)
    check_fits(record, exp.space, config.model, config.search_space)
    return record, config, exp


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``autoprune evaluate``: accuracy and cost of the dense or a policy's network."""
    if args.policy:
        record, config, exp = _load_policy(args)
        network = exp.evaluator.pruner.prune(kept_channels(record, exp.space))
    else:
        config = _config(args)
        exp = _experiment(args, config, latency=False)
        network = _copy(exp.model)
    split = args.split or "report"
    recalibrate = bool(args.policy) if args.recalibrate is None else args.recalibrate
    x = exp.example_inputs
    started = time.perf_counter()
    result = {
        "env": config.name, "model": config.model, "weights": exp.weights_source, "policy": args.policy,
        "split": config.splits.get(split, split), "images": len(exp.split(split)), "bn_recalibrated": recalibrate,
        "accuracy": exp.accuracy(network, split, recalibrate=recalibrate),
        "flops": fvcore_flops(network, x), "params": count_params(network),
        "latency_ms": measure_latency(network, x, _device(args.device), threads=args.threads),
        "device": args.device, "threads": args.threads,
    }
    result["seconds"] = round(time.perf_counter() - started, 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{config.model} ({'policy ' + args.policy if args.policy else 'dense'}) on {result['split']} "
              f"({plural(result['images'], 'image')}{', BN recalibrated' if recalibrate else ''}): "
              f"accuracy {100 * result['accuracy']:.2f}% | {FLOPS_LABEL} {result['flops'] / 1e6:.3f}M | "
              f"params {result['params'] / 1e6:.4f}M | latency {result['latency_ms']:.3f} ms "
              f"({args.device}, {plural(args.threads, 'thread')}, batch 1)")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """``autoprune apply``: rebuild a policy's network and save it with ``torch.save(model)``."""
    from autoprune.io import check_output_file

    out = check_output_file(args.out, example="pruned.pt")
    record, config, exp = _load_policy(args)
    network = exp.evaluator.pruner.prune(kept_channels(record, exp.space))
    if args.state_dict:
        from autoprune.core.rebuild import load_state_dict_checked

        load_state_dict_checked(network, args.state_dict, args.trust_checkpoint)
    recalibrate = args.state_dict is None if args.recalibrate is None else args.recalibrate
    if recalibrate:
        from autoprune.core.proxy import recalibrate_batchnorm

        recalibrate_batchnorm(network, exp.evaluator.proxy.calibration)
    network = network.cpu().eval()
    _write_out(out, lambda tmp: torch.save(network, tmp))
    print(f"saved {config.model} pruned by {args.policy} to {out} ({FLOPS_LABEL} "
          f"{fvcore_flops(network, exp.example_inputs) / 1e6:.3f}M, params {count_params(network) / 1e6:.4f}M); "
          f"load it with torch.load({str(out)!r}, weights_only=False)")
    return 0


def _add_finetune_export(sub: argparse._SubParsersAction) -> None:
    from autoprune.export.formats import FORMATS
    from autoprune.presets import RECOVERY_METHODS

    f = sub.add_parser("finetune", help="recover and fine-tune a policy's pruned network, then save it for deployment")
    f.add_argument("policy", help="policy.json, or a run directory holding one")
    _add_common(f)
    f.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs on the env's calibration split (default 5; 0: none)")
    f.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate, cosine-annealed to 0 (default 0.01)")
    f.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    f.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    f.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay of conv/linear weights (default 5e-4)")
    f.add_argument("--train-images", type=int, help="train on a fixed random subset of this many images (default all)")
    f.add_argument("--seed", type=int, default=0, help="seeds the subset, the data order and the augmentation")
    f.add_argument("--distill", action="store_true", help="add knowledge distillation from the dense network")
    f.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    f.add_argument("--distill-weight", type=float, default=0.7, help="weight of the distillation loss (default 0.7)")
    f.add_argument("--recover", default="bn", help=f"recovery before fine-tuning: {', '.join(RECOVERY_METHODS)} "
                   "(default bn: BatchNorm recalibration; reconstruct: AMC's least-squares reconstruction)")
    f.add_argument("--full-test", action="store_true", help="also report accuracy on the whole test split")
    f.add_argument("--onnx", action="store_true", help="also export ONNX (pip install 'autoprune[onnx]')")
    f.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    f.add_argument("--out", help="output folder (default: finetune/ beside the policy)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_finetune)

    x = sub.add_parser("export", help="export a policy for Torch-Pruning, NNI or as a CSV table")
    x.add_argument("policy", help="policy.json, or a run directory holding one")
    _add_common(x)
    x.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    x.add_argument("--out", help="output file (default: print to stdout)")
    x.set_defaults(func=cmd_export)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``autoprune finetune``: recover, fine-tune, report and save a policy's network."""
    from autoprune.finetune.run import FinetuneJob, run_finetune
    from autoprune.finetune.trainer import FinetuneSettings

    policy = policy_file(args.policy)
    settings = FinetuneSettings(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, momentum=args.momentum,
        weight_decay=args.weight_decay, distill=args.distill, temperature=args.temperature,
        distill_weight=args.distill_weight, train_images=args.train_images, seed=args.seed,
    )
    job = FinetuneJob(policy, Path(args.out) if args.out else policy.parent / "finetune", settings, args.recover,
                      args.resume, args.full_test, args.onnx, _device(args.device))
    job.check()
    record, _, exp = _load_policy(args)
    report = run_finetune(job, record, exp, progress=not args.quiet)
    for role, name in report["splits"].items():
        print(f"{role} accuracy ({name}): dense {100 * report['dense_acc'][role]:.2f}%, pruned and recovered "
              f"({args.recover}) {100 * report['before_acc'][role]:.2f}%, after {plural(args.epochs, 'epoch')} "
              f"{100 * report['after_acc'][role]:.2f}%")
    print(f"saved to {job.out_dir}: {', '.join(report['files'].values())}, report.md, report.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``autoprune export``: a policy as Torch-Pruning ratios, an NNI config list or a CSV table."""
    from autoprune.core.space import SearchSpace
    from autoprune.export.formats import FORMATS, export_policy
    from autoprune.io import check_output_file
    from autoprune.presets import load_space
    from autoprune.zoo.models import build_model

    if args.format not in FORMATS:
        raise ConfigError(f"unknown export format {args.format!r}; choose one of {', '.join(FORMATS)}")
    out = check_output_file(args.out, example="policy.csv" if args.format == "csv" else "policy.json") if args.out else None
    policy = policy_file(args.policy)
    record = PolicyRecord.load(policy)
    config = _config(args, record, policy)
    model = build_model(config.model, config.num_classes, config.model_args).eval()  # the architecture is enough: no weights, no data
    x = torch.zeros(record.input_shape)
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, IndexError):
        raise PolicyError(f"the policy's input_shape {record.input_shape} does not fit {config.model}") from None
    space = SearchSpace.from_model(model, x, load_space(config.search_space))
    check_fits(record, space, config.model, config.search_space)
    text = export_policy(record, space, model, args.format)
    if out is None:
        print(text, end="")
        return 0
    _write_out(out, lambda tmp: tmp.write_text(text))
    print(f"wrote {args.format} export of {args.policy} to {out}")
    return 0


def _write_out(out: Path, write: Callable[[Path], object]) -> None:
    """Write ``--out`` atomically; a path the operating system refuses is one ConfigError line."""
    from autoprune.io import atomic_write, output_error

    try:
        atomic_write(out, write)
    except OSError as e:
        raise output_error(out, e) from None


def cmd_list(args: argparse.Namespace) -> int:
    """``autoprune list``: presets, search spaces, methods and models."""
    print(f"env presets:    {', '.join(env_names())}")
    print(f"search spaces:  {', '.join(space_names())}")
    print(f"methods:        {', '.join(SEARCHERS)}")
    for name, cls in SEARCHERS.items():
        variant = next((o for o in cls.options if o.name == cls.variant_option), None)
        choices = f" ({variant.name}: {', '.join(variant.choices or ())})" if variant else ""
        print(f"  {name:<13} {cls.summary}{choices}")
    print(f"models:         {', '.join(zoo_names())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with show_status(not getattr(args, "quiet", False)):
            code = args.func(args)
            if code == 0:
                _save_env(args)
            return code
    except AutopruneError as e:
        print(f"autoprune: error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:  # SIGINT or SIGTERM: the search stopped between candidates and wrote its outputs
        print(f"autoprune: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        where = f" while writing {e.filename!r}" if e.filename else ""
        print(f"autoprune: error: no space left on the device{where}; free some space, then run the same command "
              f"again (a search resumes with every candidate its study recorded)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a program that stopped reading (autoprune list | head)
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
