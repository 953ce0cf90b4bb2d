"""Saving a pruned network for deployment: ``torch.save``, a ``torch.export`` program, a state dict with
its policy, and optionally ONNX.

- ``pruned.pt``: ``torch.save(model)``; load with ``torch.load(path, weights_only=False)`` (needs autoprune
  importable for the CIFAR ResNets' classes).
- ``pruned.pt2``: a ``torch.export`` program with a dynamic batch dimension; ``torch.export.load(path).module()``
  runs it with PyTorch alone.
- ``state_dict.pt`` + ``policy.json``: ``autoprune apply policy.json --state-dict state_dict.pt`` rebuilds it.
- ``pruned.onnx`` (optional): exported from the same program by ``torch.onnx`` (needs ``onnx`` and ``onnxscript``).

Every file is written under a temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import torch
from torch import nn

from autoprune.core.policy import PolicyRecord
from autoprune.core.rebuild import POLICY_FILE
from autoprune.errors import ConfigError, UnsupportedModelError
from autoprune.io import atomic_write

MODEL_FILE = "pruned.pt"
PROGRAM_FILE = "pruned.pt2"
STATE_DICT_FILE = "state_dict.pt"
ONNX_FILE = "pruned.onnx"
ONNX_PACKAGES = ("onnx", "onnxscript")


def check_onnx_available() -> None:
    """Raise :class:`ConfigError` if the packages ONNX export needs are missing."""
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"--onnx needs the packages {', '.join(missing)}; pip install 'autoprune[onnx]'")


def export_program(network: nn.Module, example_inputs: torch.Tensor) -> torch.export.ExportedProgram:
    """The ``torch.export`` program of ``network`` (eval mode, CPU) with a dynamic batch dimension.

    Raises:
        UnsupportedModelError: if ``torch.export`` cannot trace the network.
    """
    network = network.cpu().eval()
    x = example_inputs.cpu().expand(2, *example_inputs.shape[1:]).contiguous()  # batch 2: keep the batch dynamic
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        return torch.export.export(network, (x,), dynamic_shapes=({0: batch},))
    except (RuntimeError, TypeError, ValueError) as e:  # torch.export's errors for untraceable code derive from these
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"torch.export cannot export {type(network).__name__}: {first}") from None


def save_network(
    network: nn.Module, example_inputs: torch.Tensor, record: PolicyRecord, out_dir: Path, onnx: bool = False
) -> dict[str, str]:
    """Save ``network`` in every deployment format into ``out_dir``.

    Args:
        network: the pruned (fine-tuned) network; it is moved to the CPU and put in eval mode.
        example_inputs: an input batch (its batch size does not matter).
        record: the policy the network was built from, saved beside its state dict.
        out_dir: the output folder (created if needed).
        onnx: also export ONNX.

    Returns:
        Format name -> file name inside ``out_dir``.
    """
    network = network.cpu().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    program = export_program(network, example_inputs)
    files = {"torch.save": MODEL_FILE, "torch.export": PROGRAM_FILE, "state_dict": STATE_DICT_FILE,
             "policy": POLICY_FILE}
    atomic_write(out_dir / MODEL_FILE, lambda p: torch.save(network, p))
    atomic_write(out_dir / PROGRAM_FILE, lambda p: torch.export.save(program, p))
    atomic_write(out_dir / STATE_DICT_FILE, lambda p: torch.save(network.state_dict(), p))
    record.save(out_dir / POLICY_FILE)
    if onnx:
        atomic_write(out_dir / ONNX_FILE, lambda p: _export_onnx(program, p))
        files["onnx"] = ONNX_FILE
    return files


def _export_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its progress
        torch.onnx.export(program, f=str(path), input_names=["input"], output_names=["logits"], verbose=False)
