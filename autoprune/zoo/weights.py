"""Loading checkpoints into zoo networks: local files (``weights_only`` by default) or torchvision weights."""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections.abc import Iterable
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


def read_state_dict(
    path: str | Path, trust: bool = False, expected: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file.

    Accepts a bare state dict or one held (once or twice nested) under a ``state_dict``, ``model``, ``net``
    or ``module`` key, and strips the wrapper prefixes ``module.`` (DataParallel), ``model.`` and
    ``_orig_mod.`` (torch.compile) that all keys share: with ``expected`` (the model's keys) only as far as
    that makes more keys match, without it only ``module.`` and ``_orig_mod.``.

    Args:
        path: the checkpoint file.
        trust: unpickle arbitrary objects (``weights_only=False``); only for files you trust.
        expected: the keys of the network the weights are for.

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
    state = _unwrap(blob)
    if state is None:
        raise WeightsError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    return strip_prefixes(state, expected)


_CONTAINER_KEYS = ("state_dict", "model", "net", "module")
"""Keys training scripts keep the state dict under (``{"model": {"state_dict": ...}}`` is found too)."""

_PREFIXES = ("module.", "model.", "_orig_mod.")
"""Prefixes wrappers add to every key: DataParallel/DDP, a LightningModule-style holder, torch.compile."""


def _unwrap(blob: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    """The state dict in a loaded checkpoint: itself, a module's, or one under a container key."""
    if isinstance(blob, nn.Module):
        blob = blob.state_dict()
    if not isinstance(blob, dict) or not blob:
        return None
    if all(isinstance(k, str) for k in blob) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob
    if depth < 2:
        for key in _CONTAINER_KEYS:
            if key in blob and (found := _unwrap(blob[key], depth + 1)) is not None:
                return found
    return None


def strip_prefixes(state: dict[str, torch.Tensor], expected: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """``state`` without the wrapper prefixes all its keys share (``_orig_mod.module.`` and the like).

    With ``expected``, a prefix is stripped only when that makes more keys match ``expected`` (a model whose
    own first attribute is ``model`` keeps its keys); without it, only ``module.`` and ``_orig_mod.`` are.
    """
    prefixes = _PREFIXES if expected is not None else ("module.", "_orig_mod.")
    candidates = [state]
    while (keys := list(candidates[-1])) and (
        prefix := next((p for p in prefixes if all(k.startswith(p) for k in keys)), None)
    ):
        candidates.append({k.removeprefix(prefix): v for k, v in candidates[-1].items()})
    if expected is None:
        return candidates[-1]
    wanted = set(expected)
    scores = [len(wanted.intersection(c)) for c in candidates]
    if max(scores) == 0:
        return candidates[-1]  # nothing matches anyway: the plainest keys make the clearest message
    return candidates[scores.index(max(scores))]  # the least stripping that matches best


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
        state = read_state_dict(path, trust, expected=model.state_dict().keys())
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
    """Load ``state`` into ``model`` if every key and shape fits, else raise one line naming what does not."""
    expected = model.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 have no BatchNorm batch counters; they are not weights.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            shapes = [f"{k} is {tuple(state[k].shape)} in the checkpoint but {tuple(expected[k].shape)} in the model"
                      for k in mismatched[:3]]
            parts.append(f"{len(mismatched)} wrongly shaped: {_few(shapes, len(mismatched))}")
        if missing:
            parts.append(f"{len(missing)} parameters missing, e.g. {_few(missing, len(missing))}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected parameters, e.g. {_few(unexpected, len(unexpected))}")
        raise WeightsError(
            f"checkpoint {source!r} does not fit model {model_name} ({'; '.join(parts)}); it was saved for "
            f"another architecture or other --model-args: pass weights trained for {model_name} or choose the "
            f"matching --model and --model-args"
        )
    model.load_state_dict(state, strict=False)


def _few(items: list[str], total: int, shown: int = 3) -> str:
    """The first ``shown`` items, and how many more there are."""
    more = f" (+{total - shown} more)" if total > shown else ""
    return ", ".join(items[:shown]) + more
