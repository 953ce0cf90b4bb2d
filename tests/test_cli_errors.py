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
    pytest.param(["--proxy-images", "0"], "proxy images", id="proxy-images-0"),
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


def test_search_rejects_budget_that_looks_like_an_option(fails: Callable[..., str]) -> None:
    assert "--budget" in fails("search", "--budget", "-3ms")


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
