"""Exporting a policy to other pruning tools: Torch-Pruning, NNI 3.x, NNI 2.x, and a CSV table.

Ratios are the fraction of output channels removed (the meaning both tools use). Torch-Pruning's
``BasePruner`` keeps ``int(C * (1 - ratio))`` channels of a group with ``C`` channels; the exported
ratio is ``(C - kept) / C``, lowered by a few ulps where floating-point rounding would otherwise make
that product fall just below ``kept`` (it does for about one (C, kept) pair in five), so Torch-Pruning
rebuilds exactly the recorded channel counts. NNI gets the plain ``(C - kept) / C``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from autoprune.core.cost import fvcore_flops
from autoprune.core.graph import build_dependency_graph, is_depthwise
from autoprune.core.policy import PolicyRecord
from autoprune.core.space import SearchSpace, Unit
from autoprune.errors import ConfigError

Exporter = Callable[[PolicyRecord, SearchSpace, nn.Module], str]
CSV_COLUMNS = ("unit", "dense_channels", "kept_channels", "ratio", "flops_share")


def torch_pruning_ratio(dense: int, kept: int) -> float:
    """The pruning ratio for which Torch-Pruning keeps exactly ``kept`` of ``dense`` channels.

    Torch-Pruning keeps ``int(dense * (1 - ratio))`` channels (local pruning, one step).
    """
    ratio = (dense - kept) / dense
    while int(dense * (1 - ratio)) < kept:
        ratio = math.nextafter(ratio, -math.inf)
    return ratio


def torch_pruning_ratios(record: PolicyRecord) -> dict[str, float]:
    """Unit (root module) name -> the ratio Torch-Pruning needs to keep the recorded channels."""
    return {name: torch_pruning_ratio(ch["dense"], ch["kept"]) for name, ch in record.channels.items()}


def torch_pruning_ratio_dict(model: nn.Module, policy: PolicyRecord) -> dict[nn.Module, float]:
    """The ``pruning_ratio_dict`` for Torch-Pruning's ``BasePruner`` that rebuilds ``policy`` on ``model``.

    Keys are module objects of ``model``: one per coupled group, the group's root (the unit's module).
    Use it with ``global_pruning=False``, ``isomorphic=False``, the policy's criterion
    (:func:`autoprune.core.prune.importance_of`), :func:`torch_pruning_ignored_layers` and, for the CIFAR
    ResNets, ``customized_pruners=autoprune.core.graph.CUSTOMIZED_PRUNERS``.

    Raises:
        ConfigError: if a unit of the policy is not a module of ``model``.
    """
    modules = dict(model.named_modules())
    missing = [n for n in policy.channels if n not in modules]
    if missing:
        raise ConfigError(f"policy units {missing[:3]} are not modules of {type(model).__name__}")
    return {modules[name]: ratio for name, ratio in torch_pruning_ratios(policy).items()}


def torch_pruning_ignored_layers(model: nn.Module, policy: PolicyRecord) -> list[nn.Module]:
    """The ``ignored_layers`` that keep Torch-Pruning off every group the policy does not prune.

    They are the output-pruned convolution and linear layers of every other group (the classifier's
    group included), traced on an input of the policy's ``input_shape``.
    """
    graph = build_dependency_graph(model, torch.zeros(policy.input_shape))
    names = {m: n for n, m in model.named_modules()}
    ignored = []
    for group in graph.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        producers = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
                     and isinstance(dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))]
        if not any(names.get(m) in policy.channels for m in producers):
            ignored += [m for m in producers if m not in ignored]
    return ignored


def _producers(unit: Unit, modules: dict[str, nn.Module]) -> list[str]:
    """The unit's output-pruned convolution and linear layers (depthwise ones follow their input)."""
    return [name for name, role in unit.members if role == "out"
            and isinstance(modules[name], (nn.modules.conv._ConvNd, nn.Linear)) and not is_depthwise(modules[name])]


def _plain_ratio(record: PolicyRecord, name: str) -> float:
    ch = record.channels[name]
    return (ch["dense"] - ch["kept"]) / ch["dense"]


def nni_config_list(record: PolicyRecord, space: SearchSpace, model: nn.Module) -> list[dict[str, Any]]:
    """NNI 3.x ``config_list``: one entry per unit, output-channel granularity.

    A unit whose group couples several layers (a residual stream) lists them all with one
    ``dependency_group_id``, so that NNI removes the same channels from each.
    """
    configs = []
    for unit, ops, _ in _policy_units(record, space, model):
        config: dict[str, Any] = {"op_names": ops, "sparse_ratio": _plain_ratio(record, unit.name),
                                  "granularity": "out_channel"}
        if len(ops) > 1:
            config["dependency_group_id"] = unit.name
        configs.append(config)
    return configs


def nni2_config_list(record: PolicyRecord, space: SearchSpace, model: nn.Module) -> list[dict[str, Any]]:
    """NNI 2.x ``config_list`` (filter pruners): one entry per unit with ``sparsity_per_layer``."""
    return [{"op_names": ops, "sparsity_per_layer": _plain_ratio(record, unit.name),
             "op_types": sorted({type(modules[n]).__name__ for n in ops})}
            for unit, ops, modules in _policy_units(record, space, model)]


def _policy_units(record: PolicyRecord, space: SearchSpace, model: nn.Module
                  ) -> Iterator[tuple[Unit, list[str], dict[str, nn.Module]]]:
    """The units the policy prunes, each with its output-pruned layers' names and the model's modules."""
    modules = dict(model.named_modules())
    for unit in space.units:
        if unit.name in record.channels:
            yield unit, _producers(unit, modules), modules


def flops_shares(model: nn.Module, space: SearchSpace, example_inputs: torch.Tensor) -> dict[str, float]:
    """Each unit's share of the dense network's FLOPs (MACs, fvcore): the FLOPs of its member layers.

    Members are the layers whose FLOPs shrink with the unit's channels (its producers, their BatchNorms,
    depthwise convolutions and the consumers of its channels). A layer between two units counts in
    both, so shares need not sum to one.
    """
    per_module = fvcore_flops(model, example_inputs, by_module=True)
    total = per_module[""]
    return {u.name: sum(per_module.get(name, 0) for name, _ in u.members) / total for u in space.units}


def csv_table(record: PolicyRecord, space: SearchSpace, model: nn.Module) -> str:
    """One CSV row per unit: name, dense and kept channels, pruning ratio and FLOPs share."""
    shares = flops_shares(model, space, torch.zeros(record.input_shape))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for unit in space.units:
        if unit.name in record.channels:
            ch = record.channels[unit.name]
            writer.writerow([unit.name, ch["dense"], ch["kept"], f"{_plain_ratio(record, unit.name):.6f}",
                             f"{shares[unit.name]:.6f}"])
    return out.getvalue()


def _json(build: Callable[[PolicyRecord, SearchSpace, nn.Module], Any]) -> Exporter:
    return lambda record, space, model: json.dumps(build(record, space, model), indent=2) + "\n"


FORMATS: dict[str, Exporter] = {
    "torch-pruning": _json(lambda record, space, model: torch_pruning_ratios(record)),
    "nni": _json(nni_config_list),
    "nni2": _json(nni2_config_list),
    "csv": csv_table,
}
"""Export formats by name: each turns a policy record (with the space and the dense model) into text."""


def register_export_format(name: str, exporter: Exporter) -> None:
    """Offer ``exporter`` as ``autoprune export --format NAME``.

    Raises:
        ConfigError: if the name is taken.
    """
    if name in FORMATS:
        raise ConfigError(f"export format {name!r} is already registered")
    FORMATS[name] = exporter


def export_policy(record: PolicyRecord, space: SearchSpace, model: nn.Module, fmt: str) -> str:
    """The text of ``record`` exported as ``fmt`` (one of :data:`FORMATS`).

    Raises:
        ConfigError: for an unknown format.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[fmt](record, space, model)
