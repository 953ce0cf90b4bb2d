"""Loading checkpoints into zoo networks: local files (``weights_only`` by default) or torchvision weights."""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import WeightsError
from autoprune.zoo.models import TORCHVISION_PREFIX


def resolve_weights_path(spec: str, weights_dir: str | Path | None = None) -> Path | None:
    """The checkpoint file ``spec`` names: a path, or a file name inside the weights folder.

    The weights folder is ``weights_dir`` or else ``AUTOPRUNE_WEIGHTS_DIR``. Returns None when no such
    file exists.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    folder = weights_dir if weights_dir is not None else os.environ.get("AUTOPRUNE_WEIGHTS_DIR")
    if folder and not path.is_absolute() and (Path(folder).expanduser() / spec).is_file():
        return Path(folder).expanduser() / spec
    return None


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file.

    Accepts a bare state dict or one under a ``state_dict`` or ``model`` key, and strips the
    ``module.`` prefix DataParallel adds.

    Args:
        path: the checkpoint file.
        trust: unpickle arbitrary objects (``weights_only=False``); only for files you trust.

    Raises:
        WeightsError: if the file is missing, corrupt, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {str(path)!r} does not exist; check --weights or AUTOPRUNE_WEIGHTS_DIR")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # unpickling can raise anything (a trusted file: anything its classes raise)
        raise _load_error(path, e, trust) from None
    if isinstance(blob, nn.Module):
        blob = blob.state_dict()
    if isinstance(blob, dict):
        for key in ("state_dict", "model"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise WeightsError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in blob.items()}


_REFUSED = ("Unsupported global", "Unsupported class", "allowlisted", "allowed global")
"""Words of PyTorch's weights_only refusals of a pickled object (a well-formed file that --trust-checkpoint loads)."""


def _load_error(path: Path, error: Exception, trust: bool) -> WeightsError:
    """The one-line error for a checkpoint ``torch.load`` could not read (never PyTorch's own advice)."""
    where = f"checkpoint {str(path)!r}"
    if not _is_torch_file(path):
        return WeightsError(f"{where} is not a PyTorch checkpoint (corrupt, truncated or another format); "
                            f"no option can load it: pass a file written by torch.save")
    text = str(error)
    if not trust and any(word in text for word in _REFUSED):
        found = re.findall(r"GLOBAL ([\w.]+)", text)
        return WeightsError(f"{where} holds pickled objects{f' ({found[0]})' if found else ''} that weights_only "
                            f"loading refuses; --trust-checkpoint loads it, which runs code from the file: "
                            f"only for files you trust")
    if trust and not isinstance(error, (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile,
                                        ValueError, UnicodeDecodeError)):
        return WeightsError(f"{where} cannot be unpickled ({type(error).__name__}: "
                            f"{(_clean_lines(error) or [type(error).__name__])[0]})")
    return WeightsError(f"{where} is corrupt ({_reason(error)}); no option can load it: pass an intact file")


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` is in one of torch.save's formats (zip, or the legacy pickle that starts with its magic number)."""
    if zipfile.is_zipfile(path):
        return True

    class _NoObjects(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise pickle.UnpicklingError("not a magic number")

    try:
        with path.open("rb") as f:
            head = io.BytesIO(f.read(64))  # the legacy format's first pickle is a dozen bytes: read no more
        return _NoObjects(head).load() == torch.serialization.MAGIC_NUMBER
    except Exception:  # noqa: BLE001  (any garbage: not a PyTorch file)
        return False


def _reason(error: BaseException) -> str:
    """PyTorch's reason for an unreadable file, without its advice to load with weights_only=False."""
    lines = [line for line in _clean_lines(error) if not any(w in line for w in (
        "weights_only", "Weights only load failed", "Please file an issue", "Check the documentation"))]
    return (lines or [type(error).__name__])[0].rstrip(":").strip() or type(error).__name__


def _clean_lines(error: BaseException) -> list[str]:
    """The error's non-empty message lines, without terminal escape codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    return [line for line in lines if line]


def load_weights(
    model: nn.Module, model_name: str, spec: str, weights_dir: str | Path | None = None, trust: bool = False
) -> str:
    """Load ``spec`` into ``model`` and return where the weights came from.

    Args:
        model: the network, built by :func:`autoprune.zoo.models.build_model`.
        model_name: its zoo name (used for torchvision weight names and messages).
        spec: a checkpoint path, a file name in the weights folder, or (torchvision models) a
            torchvision weights name such as ``IMAGENET1K_V1`` or ``DEFAULT``, downloaded when online.
        weights_dir: the weights folder (default: ``AUTOPRUNE_WEIGHTS_DIR``).
        trust: unpickle arbitrary objects when reading a file.

    Raises:
        WeightsError: if the weights cannot be found, read, or do not fit the model.
    """
    path = resolve_weights_path(spec, weights_dir)
    if path is not None:
        state = read_state_dict(path, trust)
        source = str(path)
    elif model_name.startswith(TORCHVISION_PREFIX) and "/" not in spec and not spec.endswith((".pt", ".pth", ".th")):
        state = _torchvision_state_dict(model_name.removeprefix(TORCHVISION_PREFIX), spec)
        source = f"torchvision:{spec}"
    elif Path(spec).expanduser().is_dir():
        raise WeightsError(f"checkpoint {spec!r} is a folder; pass a checkpoint file with --weights")
    else:
        raise WeightsError(
            f"checkpoint {spec!r} not found (looked at the path and in AUTOPRUNE_WEIGHTS_DIR); "
            f"pass an existing file with --weights or set AUTOPRUNE_WEIGHTS_DIR"
        )
    _load_strict(model, model_name, state, source)
    return source


def _torchvision_state_dict(arch: str, name: str) -> dict[str, torch.Tensor]:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[name.split(".")[-1]]
    except (KeyError, ValueError):
        raise WeightsError(f"{arch} has no torchvision weights named {name!r}; pass a checkpoint file instead") from None
    try:
        return weights.get_state_dict(progress=True)
    except OSError as e:
        raise WeightsError(
            f"cannot download torchvision weights {name} for {arch} ({e}); pass a local checkpoint with --weights"
        ) from None


def _load_strict(model: nn.Module, model_name: str, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 have no BatchNorm batch counters; they are not weights.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        if mismatched:
            k = mismatched[0]
            detail = f"{k} is {tuple(state[k].shape)} in the checkpoint but {tuple(expected[k].shape)} in the model"
        elif missing:
            detail = f"{len(missing)} parameters missing, e.g. {missing[0]}"
        else:
            detail = f"{len(unexpected)} unexpected parameters, e.g. {unexpected[0]}"
        raise WeightsError(
            f"checkpoint {source!r} does not fit model {model_name} ({detail}); pass weights trained for "
            f"{model_name} or choose the matching --model"
        )
    model.load_state_dict(state, strict=False)
