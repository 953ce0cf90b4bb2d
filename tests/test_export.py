"""Exports: Torch-Pruning rebuilds autoprune's networks exactly, NNI config lists follow NNI's documented
keys, the CSV table, and the ``torch.export`` program runs where autoprune cannot be imported."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoprune.cli import main
from autoprune.core.graph import CUSTOMIZED_PRUNERS
from autoprune.core.policy import PolicyRecord
from autoprune.core.prune import Pruner, importance_of
from autoprune.core.space import SearchSpace
from autoprune.export.artifacts import save_network
from autoprune.export.formats import (
    csv_table,
    flops_shares,
    nni2_config_list,
    nni_config_list,
    torch_pruning_ignored_layers,
    torch_pruning_ratio,
    torch_pruning_ratio_dict,
)
from autoprune.presets import load_space
from tests.conftest import WEIGHTS_DIR, needs_weights
from tests.helpers import count_macs, edited_policy, network, rename_first_unit

# documented keys (NNI 3.x "Compression Config Specification"; NNI 2.x legacy pruning keys)
NNI3_KEYS = {"op_names", "op_types", "op_names_re", "exclude_op_names", "exclude_op_types", "exclude_op_names_re",
             "target_names", "target_settings", "sparse_ratio", "max_sparse_ratio", "min_sparse_ratio",
             "sparse_threshold", "global_group_id", "dependency_group_id", "granularity", "apply_method"}
NNI3_GRANULARITIES = {"default", "in_channel", "out_channel", "per_channel"}
NNI2_KEYS = {"op_types", "op_names", "op_partial_names", "exclude", "sparsity_per_layer", "total_sparsity",
             "sparsity", "max_sparsity_per_layer"}


def _record(name: str, space: SearchSpace, kept: dict[str, int], x: torch.Tensor) -> PolicyRecord:
    return PolicyRecord(ratios={n: 1.0 - k / space.unit(n).channels for n, k in kept.items()},
                        channels={n: {"dense": space.unit(n).channels, "kept": k} for n, k in kept.items()},
                        model=name, input_shape=list(x.shape), criterion="l1",
                        round_to={n: space.unit(n).round_to for n in kept})


def _plain_ratio_falls_short(dense: int, kept: int) -> bool:
    """Whether Torch-Pruning's ``int(C * (1 - ratio))`` with ratio ``(C - kept) / C`` gives ``kept - 1``."""
    return int(dense * (1 - (dense - kept) / dense)) < kept


def _mixed_kept(space: SearchSpace, subset: bool) -> dict[str, int]:
    """Kept channels at ratios 0.15 .. 0.65 per unit; every fourth unit gets a count whose plain ratio
    Torch-Pruning would round one channel short (where its rounding allows one); with ``subset``, every
    third unit is left out."""
    kept = {}
    for i, u in enumerate(space.units):
        if subset and i % 3 == 2:
            continue
        kept[u.name] = u.kept(0.15 + 0.5 * ((i * 7) % 5) / 4)
        awkward = [k for k in range(u.min_kept, u.channels) if k % u.round_to == 0 and _plain_ratio_falls_short(u.channels, k)]
        if i % 4 == 0 and awkward:
            kept[u.name] = awkward[len(awkward) // 2]
    return kept


CASES = [
    pytest.param("torchvision:mobilenet_v2", "torchvision", False, id="mobilenet_v2-round8"),
    pytest.param("torchvision:mobilenet_v2", "all-convs", True, id="mobilenet_v2-subset"),
    pytest.param("resnet56", "cifar-resnet", False, marks=needs_weights, id="resnet56"),
    pytest.param("resnet56", "cifar-resnet-coupled", True, marks=needs_weights, id="resnet56-coupled-subset"),
]


@pytest.mark.parametrize("name, space_name, subset", CASES)
def test_torch_pruning_base_pruner_rebuilds_autoprune_network(name, space_name, subset):
    model, x = network(name, WEIGHTS_DIR)
    space = SearchSpace.from_model(model, x, load_space(space_name))
    kept = _mixed_kept(space, subset)
    ours = Pruner(model, x, space, "l1").prune(kept)
    record = _record(name, space, kept, x)
    # without the nudge, int(C * (1 - ratio)) would fall one channel short for some of these units, where
    # some count can (never for power-of-two widths, as in the CIFAR ResNets)
    can = any(_plain_ratio_falls_short(u.channels, k) for u in space.units for k in range(u.round_to, u.channels, u.round_to))
    assert can == any(_plain_ratio_falls_short(c["dense"], c["kept"]) for c in record.channels.values())

    theirs = copy.deepcopy(model)
    ratios = torch_pruning_ratio_dict(theirs, record)
    ignored = torch_pruning_ignored_layers(theirs, record)
    classifier = [m for m in theirs.modules() if isinstance(m, nn.Linear)][-1]
    assert classifier in ignored and len(ratios) == len(kept)
    pruner = tp.pruner.BasePruner(
        theirs, x, importance=importance_of(record.criterion), pruning_ratio_dict=ratios, ignored_layers=ignored,
        round_to=space.config.round_to, global_pruning=False, isomorphic=False,
        customized_pruners=dict(CUSTOMIZED_PRUNERS),
    )
    pruner.step()

    mine, tps = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == tps.keys()
    for key in mine:  # every layer's channel count, and the very channels kept
        assert mine[key].shape == tps[key].shape, key
        assert torch.equal(mine[key], tps[key]), key
    modules = dict(theirs.named_modules())
    for unit in space.units:
        root = modules[unit.name]
        assert (root.out_features if isinstance(root, nn.Linear) else root.out_channels) == kept.get(unit.name, unit.channels)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


def test_torch_pruning_ratio_is_exact_for_every_channel_count():
    for dense in range(1, 300):
        for kept in range(1, dense + 1):
            ratio = torch_pruning_ratio(dense, kept)
            assert int(dense * (1 - ratio)) == kept and abs(ratio - (dense - kept) / dense) < 1e-12


def test_nni_config_lists_follow_the_documented_keys():
    model, x = network("torchvision:mobilenet_v2")
    space = SearchSpace.from_model(model, x, load_space("torchvision"))
    kept = _mixed_kept(space, subset=False)
    record = _record("torchvision:mobilenet_v2", space, kept, x)
    modules = dict(model.named_modules())

    nni3 = json.loads(json.dumps(nni_config_list(record, space, model)))  # JSON-serialisable as it is
    assert len(nni3) == len(space.units)
    coupled = 0
    for config, unit in zip(nni3, space.units):
        assert set(config) <= NNI3_KEYS and {"op_names", "sparse_ratio", "granularity"} <= set(config)
        assert config["granularity"] == "out_channel" and config["granularity"] in NNI3_GRANULARITIES
        assert 0.0 <= config["sparse_ratio"] < 1.0
        assert abs(config["sparse_ratio"] * unit.channels - (unit.channels - kept[unit.name])) < 1e-9
        assert unit.name in config["op_names"]
        for op in config["op_names"]:
            assert isinstance(modules[op], nn.Conv2d) and modules[op].groups == 1 and modules[op].out_channels == unit.channels
        if len(config["op_names"]) > 1:
            coupled += 1
            assert config["dependency_group_id"] == unit.name
        else:
            assert "dependency_group_id" not in config
    assert coupled > 0  # the residual streams of MobileNetV2 couple several convolutions

    nni2 = json.loads(json.dumps(nni2_config_list(record, space, model)))
    for config, unit in zip(nni2, space.units):
        assert set(config) <= NNI2_KEYS and set(config) == {"op_names", "op_types", "sparsity_per_layer"}
        assert 0.0 <= config["sparsity_per_layer"] < 1.0
        assert config["op_types"] == ["Conv2d"]
        assert config["op_names"] == next(c["op_names"] for c in nni3 if unit.name in c["op_names"])


def test_csv_flops_share_is_the_member_layers_share():
    model, x = network("digits-cnn")
    space = SearchSpace.from_model(model, x, load_space("all-convs"))
    kept = _mixed_kept(space, subset=False)
    record = _record("digits-cnn", space, kept, x)
    rows = list(csv.DictReader(io.StringIO(csv_table(record, space, model))))
    assert [r["unit"] for r in rows] == list(space.names)
    assert list(rows[0]) == ["unit", "dense_channels", "kept_channels", "ratio", "flops_share"]
    for row in rows:
        assert int(row["kept_channels"]) == kept[row["unit"]] and int(row["dense_channels"]) == space.unit(row["unit"]).channels
        assert abs(float(row["ratio"]) - (1 - kept[row["unit"]] / int(row["dense_channels"]))) < 1e-6
    # features.0 (1->32, 8x8), its BN (2 per element) and features.3 (32->32, 8x8), all 3x3: counted by hand
    share = (64 * 32 * 9 + 2 * 32 * 64 + 64 * 32 * 32 * 9) / count_macs(model, x)
    assert abs(float(rows[0]["flops_share"]) - share) < 1e-6
    assert abs(flops_shares(model, space, x)["features.0"] - share) < 1e-9


@pytest.fixture(scope="module")
def digits_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--budget", "0.5flops", "--method", "uniform", "--quiet", "--out", str(run)]) == 0
    return run / "policy.json"


@pytest.mark.parametrize("fmt", ["torch-pruning", "nni", "nni2", "csv"])
def test_export_cli_writes_each_format(cli, tmp_path, digits_policy, fmt):
    code, _, err = cli("export", str(digits_policy.parent), "--format", fmt, "--out", f"policy.{fmt}")
    assert code == 0, err
    text = (tmp_path / f"policy.{fmt}").read_text()
    code, stdout, err = cli("export", str(digits_policy), "--format", fmt)
    assert code == 0 and stdout == text
    record = PolicyRecord.load(digits_policy)
    if fmt == "torch-pruning":
        ratios = json.loads(text)
        assert set(ratios) == set(record.channels)
        assert all(int(c["dense"] * (1 - ratios[n])) == c["kept"] for n, c in record.channels.items())
    elif fmt == "csv":
        assert len(text.splitlines()) == len(record.channels) + 1
    else:
        assert len(json.loads(text)) == len(record.channels)




def _wrong_dense(doc: dict[str, Any]) -> None:
    next(iter(doc["channels"].values()))["dense"] = 999


@pytest.mark.parametrize(
    "edit, args, key",
    [
        pytest.param(None, ["--format", "onnx"], "unknown export format 'onnx'", id="unknown-format"),
        pytest.param(lambda d: d.update(model="resnet20"), ["--format", "nni"], "resnet20", id="other-model"),
        pytest.param(rename_first_unit, ["--format", "csv"], "no_such_unit", id="unit-missing-from-model"),
        pytest.param(_wrong_dense, ["--format", "torch-pruning"], "999", id="other-channel-count"),
        pytest.param(None, ["--format", "nni", "--out", "no-dir/x.json"], "no-dir", id="out-folder-missing"),
    ],
)
def test_export_rejects(fails, tmp_path, digits_policy, edit, args, key):
    policy = edited_policy(digits_policy, tmp_path / "policy.json", edit) if edit else str(digits_policy)
    assert key in fails("export", policy, *args)


_ISOLATED = """
import sys
sys.modules["autoprune"] = None  # `import autoprune` (and any autoprune.*) now raises ImportError
try:
    import autoprune.zoo.cifar_resnet
except ImportError:
    pass
else:
    raise SystemExit("autoprune is importable")
import torch
program = torch.export.load(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
torch.save(program.module()(x), sys.argv[3])
"""


def _run_isolated(program: Path, x: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, str(program), "x.pt", "y.pt"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    return torch.load(tmp_path / "y.pt", weights_only=True)


def test_torch_export_program_runs_without_autoprune(tmp_path):
    model, x = network("resnet20")  # random weights; its option-A shortcut is an autoprune class
    space = SearchSpace.from_model(model, x, load_space("cifar-resnet-coupled"))
    kept = _mixed_kept(space, subset=False)
    pruned = Pruner(model, x, space).prune(kept).eval()
    files = save_network(pruned, x, _record("resnet20", space, kept, x), tmp_path / "out")
    assert files["torch.export"] == "pruned.pt2"
    batch = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))  # another batch size than traced
    with torch.no_grad():
        expected = pruned(batch)
    assert torch.allclose(_run_isolated(tmp_path / "out" / "pruned.pt2", batch, tmp_path), expected, atol=1e-5)


def test_finetune_program_runs_without_autoprune(cli, tmp_path, digits_policy):
    code, _, err = cli("finetune", str(digits_policy), "--epochs", "1", "--out", "ft", "--quiet", "--onnx")
    assert code == 0, err
    batch = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.load(tmp_path / "ft" / "pruned.pt", weights_only=False).eval()(batch)
    assert torch.allclose(_run_isolated(tmp_path / "ft" / "pruned.pt2", batch, tmp_path), expected, atol=1e-5)
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "ft" / "pruned.onnx"))
