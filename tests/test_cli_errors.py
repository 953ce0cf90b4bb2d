"""Every bad CLI input fails cleanly: one ``autoprune ...`` line on stderr, a non-zero status, no
traceback, and nothing written: the working directory (tmp_path, which holds ``results/`` and every
``--out`` the tests pass) holds the same files before and after."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from autoprune.zoo.models import build_model
from tests.conftest import CIFAR_CHECKPOINTS, needs_weights
from tests.helpers import edited_policy, rename_first_unit

BUDGET = ("--budget", "0.5flops")


class _Opaque:
    """A pickled object that only ``torch.load(weights_only=False)`` can rebuild."""




OPTION_CASES = [
    pytest.param(["--env", "nope"], "'nope'", id="unknown-preset"),
    pytest.param(["--env", "missing.yaml"], "missing.yaml", id="missing-yaml"),
    pytest.param(["--model", "resnet21", "--env", "resnet20-cifar10"], "unknown model 'resnet21'", id="model"),
    pytest.param(["--model", "torchvision:nonet", "--env", "resnet20-cifar10"], "'nonet'", id="torchvision-model"),
    pytest.param(["--model", "resnet21"], "unknown model 'resnet21'", id="model-on-builtin-env"),
    pytest.param(["--method", "nope"], "search method 'nope'", id="method"),
    pytest.param(["--space", "nope"], "search space 'nope'", id="space"),
    pytest.param(["--criterion", "nope"], "--criterion", id="criterion"),
    pytest.param(["--evals", "0"], "evals", id="evals-0"),
    pytest.param(["--threads", "0"], "--threads", id="threads-0"),
    pytest.param(["--proxy-images", "0"], "--proxy-images (proxy images) must be", id="proxy-images-0"),
    pytest.param(["--report-images", "0"], "--report-images (proxy report_images) must be", id="report-images-0"),
    pytest.param(["--calibration-images", "-5"], "--calibration-images", id="calibration-images-negative"),
    pytest.param(["--device", "foo"], "'foo'", id="device-unknown"),
    pytest.param(["--device", "cuda"], "'cuda'", id="device-cuda", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a CUDA device is available")),
]


@pytest.mark.parametrize("args, key", OPTION_CASES)
def test_search_rejects_option(fails: Callable[..., str], args: list[str], key: str) -> None:
    assert key in fails("search", *BUDGET, *args)


_DIGITS_ENV = "model: digits-cnn\nweights: builtin\ndataset: digits\n"


@pytest.mark.parametrize(
    "text, key",
    [
        pytest.param(_DIGITS_ENV + "input_shape: [1, 1, 8, 8]\nbogus: 1\n", "bogus", id="unknown-key"),
        pytest.param("model: [digits-cnn\n", "not valid YAML", id="invalid-yaml"),
        pytest.param(_DIGITS_ENV + "input_shape: [1, 1, 8, 8]\nproxy: {bogus: 1}\n", "bogus", id="unknown-proxy-key"),
        pytest.param(_DIGITS_ENV + "input_shape: abc\n", "input_shape", id="input-shape-not-a-list"),
        pytest.param(_DIGITS_ENV + "input_shape: [1, 3, 8, 8]\n", "input_shape", id="input-shape-wrong-channels"),
    ],
)
def test_search_rejects_env_file(fails: Callable[..., str], tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "env.yaml").write_text(text)
    assert key in fails("search", *BUDGET, "--env", str(tmp_path / "env.yaml"))


@pytest.mark.parametrize(
    "budget, key",
    [("abc", "'abc'"), ("0flops", "'0flops'"), ("1.5flops", "'1.5flops'"), ("-3ms", "'-3ms'"),
     ("0.5bananas", "'0.5bananas'"), ("0.01flops", "cannot be met")],
)
def test_search_rejects_budget(fails: Callable[..., str], budget: str, key: str) -> None:
    assert key in fails("search", f"--budget={budget}")


@pytest.mark.parametrize("argv", [["search", "--budget"], ["pick", "run", "--budget"], ["bench", "--budgets"]])
def test_budget_that_looks_like_an_option_reaches_the_budget_parser(fails: Callable[..., str], argv: list[str]) -> None:
    line = fails(*argv, "-3ms")  # argparse alone says "expected one argument"
    assert line.startswith("autoprune: error: cannot parse budget '-3ms'"), line


@pytest.mark.parametrize(
    "budget, dense",
    [("3MFLOPs", "(2.69M FLOPs (MACs))"), ("0.2Mparams", "(0.1405M params)")],  # the digits demo: 2.69M FLOPs, 140k params
)
def test_search_rejects_budget_above_dense_cost(fails: Callable[..., str], budget: str, dense: str) -> None:
    line = fails("search", "--budget", budget, "--out", "run")
    assert f"budget {budget} is above the dense network's cost {dense}; nothing to prune" in line


def test_unreachable_budget_message_has_units(fails: Callable[..., str]) -> None:
    line = fails("search", "--budget", "0.01flops")
    assert "cannot be met" in line and line.count("M FLOPs (MACs)") == 2  # what is left, and the limit


def _checkpoint(kind: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write a bad checkpoint of ``kind`` to ``path``."""
    if kind == "truncated":
        torch.save(build_model("digits-cnn").state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "other-model":
        torch.save(build_model("resnet20").state_dict(), path)
    elif kind == "no-tensors":
        torch.save({1, 2, 3}, path)
    elif kind == "object":
        torch.save({"state_dict": {"a": _Opaque()}}, path)
    elif kind == "vanished-class":
        module = types.ModuleType("autoprune_test_vanished")
        module.Gone = type("Gone", (), {"__module__": module.__name__})
        monkeypatch.setitem(sys.modules, module.__name__, module)
        torch.save({"state_dict": {"a": module.Gone()}}, path)
        monkeypatch.delitem(sys.modules, module.__name__)




@pytest.mark.parametrize(
    "kind, trust, key",
    [
        pytest.param("truncated", False, "corrupt"),
        pytest.param("empty", False, "corrupt"),
        pytest.param("random", False, "corrupt"),
        pytest.param("random", True, "corrupt"),
        pytest.param("other-model", False, "does not fit model digits-cnn"),
        pytest.param("no-tensors", False, "no state dict"),
        pytest.param("object", False, "--trust-checkpoint"),
        pytest.param("object", True, "no state dict"),
        pytest.param("vanished-class", True, "ckpt.th"),
    ],
)
def test_search_rejects_checkpoint(
    fails: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, trust: bool, key: str
) -> None:
    path = tmp_path / "ckpt.th"
    _checkpoint(kind, path, monkeypatch)
    message = fails("search", *BUDGET, "--model", "digits-cnn", "--weights", str(path),
                    *(["--trust-checkpoint"] if trust else []))
    assert key in message


def test_search_rejects_missing_weights(fails: Callable[..., str]) -> None:
    assert "/nonexistent.th" in fails("search", *BUDGET, "--weights", "/nonexistent.th")


@needs_weights
def test_search_rejects_weights_of_another_resnet(fails: Callable[..., str]) -> None:
    message = fails("search", *BUDGET, "--env", "resnet56-cifar10", "--weights", CIFAR_CHECKPOINTS["resnet20"])
    assert "does not fit model resnet56" in message


@needs_weights
def test_search_rejects_missing_data(fails: Callable[..., str], tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    message = fails("search", *BUDGET, "--env", "resnet20-cifar10", "--data-dir", str(empty))
    assert "AUTOPRUNE_DATA_DIR" in message and "--data-dir" in message


def test_search_refuses_non_empty_out(fails: Callable[..., str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    assert "already exists" in fails("search", *BUDGET, "--evals", "3", "--out", str(out))
    assert (out / "notes.txt").read_text() == "keep me\n"


@pytest.fixture(scope="module")
def policy_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The policy.json document of a real tiny search on digits-demo."""
    from autoprune.cli import main

    run = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", *BUDGET, "--evals", "3", "--quiet", "--out", str(run)]) == 0
    return json.loads((run / "policy.json").read_text())


def _set_kept(kept: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        next(iter(doc["channels"].values()))["kept"] = kept

    return edit


POLICY_CASES = [
    pytest.param(lambda d: d.update(model="resnet20"), "resnet20", id="other-model"),
    pytest.param(rename_first_unit, "no_such_unit", id="unknown-unit"),
]

MALFORMED_POLICIES = [
    pytest.param(_set_kept(0), id="kept-0"),
    pytest.param(_set_kept(-3), id="kept-negative"),
    pytest.param(_set_kept(10_000), id="kept-above-dense"),
    pytest.param(_set_kept("abc"), id="kept-string"),
    pytest.param(lambda d: d.update(channels=[]), id="channels-list"),
    pytest.param(lambda d: d.update(ratios=None), id="ratios-null"),
]


@pytest.mark.parametrize("command", ["evaluate", "apply"])
@pytest.mark.parametrize("edit, key", POLICY_CASES)
def test_rejects_policy_for_another_network(
    fails: Callable[..., str], tmp_path: Path, policy_doc: dict[str, Any], command: str,
    edit: Callable[[dict[str, Any]], None], key: str,
) -> None:
    policy = edited_policy(policy_doc, tmp_path / "policy.json", edit)
    argv = ["evaluate", "--policy", policy] if command == "evaluate" else ["apply", policy, "--out", "pruned.pt"]
    assert key in fails(*argv)


@pytest.mark.parametrize("edit", MALFORMED_POLICIES)
def test_evaluate_rejects_malformed_policy(
    fails: Callable[..., str], tmp_path: Path, policy_doc: dict[str, Any], edit: Callable[[dict[str, Any]], None]
) -> None:
    assert "policy.json" in fails("evaluate", "--policy", edited_policy(policy_doc, tmp_path / "policy.json", edit))


@pytest.mark.parametrize(
    "text, key",
    [(None, "does not exist"), ("{not json", "not valid JSON"), ('{"hello": 1}', "not an autoprune policy")],
    ids=["missing", "not-json", "not-a-policy"],
)
def test_evaluate_rejects_policy_file(fails: Callable[..., str], tmp_path: Path, text: str | None, key: str) -> None:
    path = tmp_path / "policy.json"
    if text is not None:
        path.write_text(text)
    assert key in fails("evaluate", "--policy", str(path))


@pytest.mark.parametrize("command", ["evaluate", "apply"])
def test_rejects_run_directory_without_policy(fails: Callable[..., str], tmp_path: Path, command: str) -> None:
    (tmp_path / "run").mkdir()
    argv = ["evaluate", "--policy", "run"] if command == "evaluate" else ["apply", "run", "--out", "pruned.pt"]
    assert "holds no policy.json" in fails(*argv)


def test_apply_rejects_missing_out_folder(
    fails: Callable[..., str], tmp_path: Path, policy_doc: dict[str, Any]
) -> None:
    policy = edited_policy(policy_doc, tmp_path / "policy.json", lambda d: None)
    assert "'no-such-dir'" in fails("apply", policy, "--out", "no-such-dir/pruned.pt")


def test_apply_rejects_out_that_is_a_folder(
    fails: Callable[..., str], tmp_path: Path, policy_doc: dict[str, Any]
) -> None:
    policy = edited_policy(policy_doc, tmp_path / "policy.json", lambda d: None)
    (tmp_path / "models").mkdir()
    assert "models" in fails("apply", policy, "--out", "models")


def test_subprocess_bad_budget(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autoprune", "search", "--budget", "0.5bananas"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("autoprune") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "'0.5bananas'" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "kind, trust, line",
    [
        pytest.param("object", False, "autoprune: error: checkpoint 'ckpt.th' holds pickled objects "
                     "(tests.test_cli_errors._Opaque) that weights_only loading refuses; --trust-checkpoint loads it, "
                     "which runs code from the file: only for files you trust", id="pickled-objects"),
        *(pytest.param(kind, trust, "autoprune: error: checkpoint 'ckpt.th' is not a PyTorch checkpoint (corrupt, "
                       "truncated or another format); no option can load it: pass a file written by torch.save",
                       id=f"{kind}{'-trusted' if trust else ''}")
          for kind in ("random", "truncated", "empty") for trust in (False, True)),
    ],
)
def test_checkpoint_messages_do_not_repeat_pytorch_advice(
    fails: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, trust: bool, line: str
) -> None:
    """A refused pickled object names --trust-checkpoint and its risk; garbage bytes get no trust advice at all."""
    _checkpoint(kind, tmp_path / "ckpt.th", monkeypatch)
    message = fails("search", *BUDGET, "--weights", "ckpt.th", *(["--trust-checkpoint"] if trust else []))
    assert message == line
    assert "weights_only=False" not in message and "will likely succeed" not in message


def test_apply_state_dict_honours_trust_checkpoint(
    fails: Callable[..., str], tmp_path: Path, policy_doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advice to pass --trust-checkpoint holds for --state-dict too: apply reads it with the option."""
    policy = edited_policy(policy_doc, tmp_path / "policy.json", lambda d: None)
    _checkpoint("object", tmp_path / "ckpt.th", monkeypatch)
    assert "--trust-checkpoint loads it" in fails("apply", policy, "--state-dict", "ckpt.th", "--out", "pruned.pt")
    trusted = fails("apply", policy, "--state-dict", "ckpt.th", "--out", "pruned.pt", "--trust-checkpoint")
    assert trusted == "autoprune: error: checkpoint 'ckpt.th' holds no state dict of tensors"


def _extra_ratio(doc: dict[str, Any]) -> None:
    doc["ratios"]["no_such_unit"] = 0.5  # channels untouched: only the ratios name it


@pytest.mark.parametrize("command", ["export", "apply", "evaluate", "finetune"])
def test_rejects_policy_whose_ratios_name_a_unit_the_model_lacks(
    fails: Callable[..., str], tmp_path: Path, policy_doc: dict[str, Any], command: str
) -> None:
    policy = edited_policy(policy_doc, tmp_path / "policy.json", _extra_ratio)
    argv = {"export": ["export", policy, "--format", "torch-pruning"], "apply": ["apply", policy, "--out", "p.pt"],
            "evaluate": ["evaluate", "--policy", policy], "finetune": ["finetune", policy, "--out", "ft"]}[command]
    assert fails(*argv) == ("autoprune: error: policy units ['no_such_unit'] are not in digits-cnn's search space "
                            "'all-convs'; this policy was made for another network or space")


def _files(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "list.yaml").write_text("- model\n")
    (tmp_path / "not-json.json").write_text("not json\n")
    (tmp_path / "text.pt").write_text("hello\n")


NEWCOMER_CASES = [  # bad inputs a newcomer tries first, and the one line each gets
    (["search", *BUDGET, "--evals", "0"], "autoprune: error: --evals (--episodes) must be >= 1, got 0"),
    (["search", *BUDGET, "--evals", "abc"],
     "autoprune search: error: argument --evals/--episodes: invalid int value: 'abc' (see autoprune search --help)"),
    (["search", *BUDGET, "--seed", "-1"], "autoprune: error: --seed must be in 0..4294967295, got -1"),
    (["search", *BUDGET, "--seed", "4294967296"], "autoprune: error: --seed must be in 0..4294967295, got 4294967296"),
    (["search", *BUDGET, "--workers", "0"], "autoprune: error: --workers must be >= 1, got 0"),
    (["search", *BUDGET, "--env", "folder"], "autoprune: error: env preset 'folder' is a folder; pass a YAML file or "
     "one of digits-demo, resnet20-cifar10, resnet56-cifar10"),
    (["search", *BUDGET, "--env", "empty.yaml"],
     "autoprune: error: env preset 'empty.yaml' is empty; write a YAML mapping of its settings in it"),
    (["search", *BUDGET, "--env", "list.yaml"],
     "autoprune: error: env preset 'list.yaml' must be a YAML mapping of settings, not a list"),
    (["search", *BUDGET, "--space", "empty.yaml"],
     "autoprune: error: search space 'empty.yaml' is empty; write a YAML mapping of its settings in it"),
    (["search", *BUDGET, "--weights", "folder"],
     "autoprune: error: checkpoint 'folder' is a folder; pass a checkpoint file with --weights"),
    (["search", *BUDGET, "--data-dir", "no-such-folder"], "autoprune: error: data folder 'no-such-folder' (--data-dir) "
     "does not exist; pass an existing folder, or add --download to fetch public data into it"),
    (["search", "--budget", "-0.5flops"], "autoprune: error: cannot parse budget '-0.5flops'"),
    (["evaluate", "--split", "nonsense"],
     "autoprune: error: digits has splits ('train', 'val', 'test') (plus -search/-report halves), got 'nonsense'"),
    (["evaluate", "--policy", "not-json.json"], "autoprune: error: policy file 'not-json.json' is not valid JSON"),
    (["pick", "folder", "--budget", "0.4"], "autoprune: error: cannot parse budget '0.4'"),
    (["finetune", "not-json.json", "--epochs", "-1", "--out", "ft"], "autoprune: error: --epochs must be >= 0, got -1"),
    (["finetune", "not-json.json", "--lr", "-1e-3", "--out", "ft"], "autoprune: error: --lr must be > 0, got -0.001"),
    (["finetune", "not-json.json", "--seed", "-1", "--out", "ft"],
     "autoprune: error: --seed must be in 0..4294967295, got -1"),
    (["export", "not-json.json", "--format", "nonsense"],
     "autoprune: error: unknown export format 'nonsense'; choose one of torch-pruning, nni, nni2, csv"),
    (["apply", "not-json.json", "--out", "p.pt"], "autoprune: error: policy file 'not-json.json' is not valid JSON"),
    (["sensitivity", "--ratios", "abc"], "autoprune: error: cannot parse ratio grid 'abc'; write start:stop:step "
     "(0.1:0.9:0.1) or a list (0.2,0.5,0.8)"),
    (["bench", "--seeds", "0", "--quick"], "autoprune: error: --seeds must be >= 1, got 0"),
]


@pytest.mark.parametrize("argv, line", NEWCOMER_CASES, ids=[" ".join(a) for a, _ in NEWCOMER_CASES])
def test_newcomer_bad_inputs(fails: Callable[..., str], tmp_path: Path, argv: list[str], line: str) -> None:
    _files(tmp_path)
    assert fails(*argv).startswith(line)
