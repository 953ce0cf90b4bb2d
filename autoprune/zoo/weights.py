"""Loading checkpoints into zoo networks: local files (``weights_only`` by default) or torchvision weights."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

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
    except pickle.UnpicklingError as e:
        if not trust and "Unsupported global" in str(e):
            raise WeightsError(
                f"checkpoint {str(path)!r} holds objects other than tensors, which weights_only=True refuses "
                f"({_first_line(e, 'Unsupported global')}); if you trust the file, pass --trust-checkpoint"
            ) from None
        raise WeightsError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch file ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError) as e:
        raise WeightsError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch file ({_first_line(e)})") from None
    except Exception as e:  # unpickling a trusted file can raise anything its classes raise
        raise WeightsError(f"checkpoint {str(path)!r} cannot be unpickled ({type(e).__name__}: {_first_line(e)})") from None
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


def _first_line(error: BaseException, containing: str | None = None) -> str:
    """The error's first (or first ``containing``) message line, without terminal escape codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line] or [type(error).__name__]
    if containing:
        lines = [line for line in lines if containing in line] or lines
    return lines[0]


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
