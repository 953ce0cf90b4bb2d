"""What a benchmark runs: the matrix's methods, budgets and seeds, and the search of each cell."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autoprune.core.budget import Budget
from autoprune.core.metrics import get_metric
from autoprune.core.racing import Racing
from autoprune.errors import ConfigError
from autoprune.run.confirm import DEFAULT_CANDIDATES
from autoprune.run.search import SearchSettings
from autoprune.search import SEARCHERS, get_searcher, methods_accepting, methods_where
from autoprune.search.sensitivity import PRIORS

DEFAULT_METHODS = ("uniform", "random", "sensitivity", "netadapt", "optuna-tpe", "optuna-cmaes", "ddpg", "sac")
FULL_FIDELITY = "@full"
"""Spec suffix of a racing method run with racing off (every candidate scored on every proxy image): ``random@full``."""


OPTIONS_SEPARATOR = ":"
"""Spec separator of a method's own options: ``ddpg:action-mode=amc,warmup-draw=actions`` (each a flag of the method
without its dashes; an ablation's variants)."""


def parse_methods(text: str) -> tuple[str, ...]:
    """A comma list of method specs; an item ``flag=value`` continues the options of the spec before it
    (``random,ddpg:action-mode=amc,warmup-draw=actions`` -> ``random`` and ``ddpg:action-mode=amc,warmup-draw=actions``)."""
    specs: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if item and "=" in item and OPTIONS_SEPARATOR not in item and specs:
            specs[-1] += "," + item
        elif item:
            specs.append(item)
    return tuple(specs)


def full_fidelity(spec: str) -> tuple[str, bool]:
    """``random@full`` -> (``random``, True); ``random`` -> (``random``, False) (options after ``:`` are set aside)."""
    head, sep, tail = spec.partition(OPTIONS_SEPARATOR)
    if head.endswith(FULL_FIDELITY):
        return head[: -len(FULL_FIDELITY)] + sep + tail, True
    return spec, False


def spec_options(spec: str) -> dict[str, Any]:
    """The method options a spec sets after ``:`` (``ddpg:action-mode=amc`` -> ``{"action_mode": "amc"}``), typed and
    checked against the method's options.

    Raises:
        ConfigError: for an option the method does not take, a malformed item, or a bad value.
    """
    head, _, tail = spec.partition(OPTIONS_SEPARATOR)
    if not tail:
        return {}
    cls = get_searcher(parse_method(head)[0])
    options: dict[str, Any] = {}
    for item in tail.split(","):
        flag, eq, text = item.partition("=")
        option = next((o for o in cls.options if o.cli_flag == "--" + flag), None)
        if not eq or option is None:
            known = ", ".join(o.cli_flag[2:] for o in cls.options)
            raise ConfigError(f"{spec!r}: write {cls.name}{OPTIONS_SEPARATOR}<option>=<value>,... with options of "
                              f"{cls.name} ({known})")
        if option.choices and text not in option.choices:
            raise ConfigError(f"{spec!r}: {flag} is one of {', '.join(option.choices)}")
        try:
            options[option.name] = option.type(text)
        except ValueError:
            raise ConfigError(f"{spec!r}: {flag}={text!r} is not a valid value") from None
    return options


def parse_method(spec: str) -> tuple[str, str | None, str | None]:
    """A method spec -> (method, variant, prior). ``optuna-tpe`` -> (``optuna``, ``tpe``, None): a method whose
    ``variant_option`` is set (Optuna's sampler) is named with its value; ``ddpg+sensitivity`` -> (``ddpg``, None,
    ``sensitivity``): the searcher with ``--prior sensitivity``. A racing method's spec may end in ``@full``
    (racing off, see :func:`full_fidelity`), and then set the method's own options (see :func:`spec_options`).

    Raises:
        ConfigError: for an unknown method, variant or prior, a prior on a method that takes none, or ``@full`` on
            a method that does not race.
    """
    stem, full = full_fidelity(spec.partition(OPTIONS_SEPARATOR)[0])
    method, variant, prior = _parse_stem(stem, spec)
    if full and not get_searcher(method).races:
        raise ConfigError(f"{spec!r}: {FULL_FIDELITY} (racing off) applies to {', '.join(methods_where('races'))}")
    return method, variant, prior


def _parse_stem(stem: str, spec: str) -> tuple[str, str | None, str | None]:
    base, _, prior = stem.partition("+")
    if prior and prior not in PRIORS:
        raise ConfigError(f"unknown prior in {spec!r}; write <method>+<prior> with one of {', '.join(PRIORS)}")
    method, variant = base, None
    if base not in SEARCHERS:
        method, _, variant = base.rpartition("-")
    cls = get_searcher(method if method in SEARCHERS else base)
    if cls.variant_option is not None:
        option = next(o for o in cls.options if o.name == cls.variant_option)
        if variant is None:
            examples = ", ".join(f"{cls.name}-{c}" for c in (option.choices or ())[:2])
            raise ConfigError(f"name the {option.name} of {cls.name} in the benchmark: {examples}, ...")
        if option.choices and variant not in option.choices:
            raise ConfigError(f"unknown {cls.name.capitalize()} {option.name} in {spec!r}; write {cls.name}-<{option.name}> with one of "
                              f"{', '.join(option.choices)}")
    elif variant is not None:
        get_searcher(base)  # raises: an unknown method
    if prior and not cls.accepts("prior"):
        raise ConfigError(f"{spec!r}: a prior applies to {', '.join(methods_accepting('prior'))}, not {cls.name}")
    return cls.name, variant, prior or None


@dataclass(frozen=True)
class BenchSettings:
    """What a benchmark runs; everything but ``methods``, ``budgets``, ``seeds`` and ``out`` must match to reuse cells.

    Attributes:
        env: the resolved environment (network, weights, data, proxy, space).
        budgets: budgets, e.g. ``("0.3flops", "0.5flops", "0.7flops")``.
        methods: method specs (``optuna-<sampler>`` for Optuna).
        seeds: seeds per stochastic method.
        evals: evaluations per cell (episodes for the rl methods).
        finetune_epochs: epochs of the short fine-tune of each best policy (0: none).
        finetune_images: train on a fixed subset of this many calibration images (None: all).
        racing: ``on`` (racing methods race on the default stages, unless their spec ends in ``@full``), image counts
            such as ``250,1000`` (they race on those stages) or ``off`` (no cell races).
        confirm: each cell's final choice among its best ``confirm`` candidates, scored again on unseen proxy-split
            images (0: the best proxy accuracy, as cells made before it; see :mod:`autoprune.run.confirm`).
        latency: time each best policy (and the dense network) on the device.
        device: where to evaluate, fine-tune and time.
        threads: CPU threads while timing.
        data_dir: data folder (default AUTOPRUNE_DATA_DIR).
        name: the report's name (default: the env's name).
        out: folder of the report and the cells.
    """

    env: dict[str, Any]
    budgets: tuple[str, ...]
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = 3
    evals: int = 300
    finetune_epochs: int = 0
    finetune_images: int | None = None
    latency: bool = True
    device: str = "cpu"
    threads: int = 1
    data_dir: str | None = None
    name: str | None = None
    out: str = "results/benchmarks"
    racing: str = "on"
    confirm: int = DEFAULT_CANDIDATES

    def check(self) -> None:
        """Raise :class:`ConfigError` or :class:`BudgetError` for settings that cannot run."""
        if not self.methods:
            raise ConfigError("--methods names no method")
        Racing.parse(self.racing, proxy_images=sys.maxsize)  # its form; the counts meet the proxy when a cell runs
        for spec in self.methods:
            cls = get_searcher(parse_method(spec)[0])
            spec_options(spec)
            for text in self.budgets:
                if cls.exact_cost_only and get_metric(Budget.parse(text).metric).measured:
                    raise ConfigError(f"{spec} cannot search the latency budget {text} (it needs exact costs); "
                                      f"benchmark {', '.join(methods_where('exact_cost_only'))} on flops or params "
                                      f"budgets")
        if not self.budgets:
            raise ConfigError("--budgets names no budget")
        for text in self.budgets:
            Budget.parse(text)
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {self.seeds}")
        if self.evals < 1:
            raise ConfigError(f"--evals must be >= 1, got {self.evals}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.finetune_images is not None and self.finetune_images < 2:
            raise ConfigError(f"--finetune-images must be >= 2, got {self.finetune_images}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if not self.title or Path(self.title).name != self.title or self.title.startswith("."):
            raise ConfigError(f"--name {self.title!r} must be a plain file name (no folders)")

    @property
    def title(self) -> str:
        """The report's name."""
        return self.name or self.env["name"]

    @property
    def cell_dir(self) -> Path:
        """Where the cells and the benchmark's identity are saved."""
        return Path(self.out) / "cells" / self.title

    def identity(self) -> dict[str, Any]:
        """The settings finished cells depend on (a rerun with other values must not reuse them)."""
        keep = ("env", "finetune_epochs", "finetune_images", "latency", "device", "threads", "racing", "confirm")
        return {k: v for k, v in asdict(self).items() if k in keep}

    def cells(self) -> list[tuple[int, str, str]]:
        """Every (seed, budget, method) cell, seed by seed so that each method gets its first seed first."""
        return [(seed, budget, spec) for seed in range(self.seeds) for budget in self.budgets for spec in self.methods
                if seed == 0 or not get_searcher(parse_method(spec)[0]).deterministic]

    def cell_path(self, budget: str, spec: str, seed: int) -> Path:
        """The JSON file of one cell."""
        return self.cell_dir / str(Budget.parse(budget)) / f"{spec}-e{self.evals}-s{seed}.json"

    def search_settings(self, budget: str, spec: str, seed: int, units: int | None = None) -> SearchSettings:
        """The search of one cell, with the options its method sizes to ``evals`` (and to the space's ``units``,
        when given: NetAdapt's step)."""
        method, variant, prior = parse_method(spec)
        cls = get_searcher(method)
        options: dict[str, Any] = {} if prior is None else {"prior": prior}
        options.update(cls.benchmark_options(Budget.parse(budget), self.evals, units))
        options.update(spec_options(spec))
        fields: dict[str, Any] = {}
        if cls.races and (self.racing == "off" or full_fidelity(spec)[1]):
            fields["racing"] = "off"
        elif cls.races:
            fields["racing"] = self.racing
        if cls.variant_option is not None:
            target = fields if cls.variant_option in SearchSettings.__dataclass_fields__ else options
            target[cls.variant_option] = variant
        return SearchSettings(env=self.env, budget=str(Budget.parse(budget)), method=method, evals=self.evals,
                              seed=seed, device=self.device, threads=self.threads, data_dir=self.data_dir,
                              method_options=options, confirm=self.confirm, **fields)


def parse_budgets(text: str) -> tuple[str, ...]:
    """``0.3,0.5,0.7`` (bare numbers are FLOPs fractions) or ``0.5flops,0.6params`` -> normalised budget strings.

    Raises:
        BudgetError: for a malformed budget.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    return tuple(str(Budget.parse(t + "flops" if t.replace(".", "", 1).isdigit() else t)) for t in items)
