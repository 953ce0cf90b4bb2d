"""Environment and search-space presets: YAML files shipped in ``envs/`` and ``search_spaces/``.

A preset is named (``resnet56-cifar10``) or given as a path to a YAML file of the same form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from autoprune.core.space import SpaceConfig
from autoprune.errors import ConfigError
from autoprune.io import load_yaml

DEFAULT_ENV = "digits-demo"
SPLIT_ROLES = {"proxy", "report", "calibration"}
PROXY_KEYS = {"kind", "images", "calibration_batches", "calibration_images", "report_images", "batch_size", "recover",
              "forward"}
RECOVERY_METHODS = ("bn", "reconstruct")  # bn: BatchNorm recalibration; reconstruct: AMC's least squares
_ENV_KEYS = {"name", "description", "model", "weights", "dataset", "num_classes", "input_shape", "normalize",
             "splits", "proxy", "search_space", "criterion", "model_args", "resize_size"}
_OPTIONAL_KEYS = {"model_args": {}, "resize_size": None}  # written to config.yaml only when set


@dataclass
class EnvConfig:
    """Everything an environment preset names: network, weights, data, splits, proxy and search space."""

    name: str
    model: str
    weights: str | None
    dataset: str
    input_shape: list[int]
    num_classes: int = 10
    normalize: dict[str, list[float]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=lambda: {"proxy": "val", "report": "test", "calibration": "train"})
    proxy: dict[str, Any] = field(default_factory=dict)
    search_space: str = "all-convs"
    criterion: str = "l1"
    description: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    resize_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration, as written to a run's ``config.yaml`` (settings at their defaults that
        older autoprune versions did not have are left out, so that their runs and benchmark cells still match)."""
        doc = {k: getattr(self, k) for k in ("name", "description", "model", "weights", "dataset", "num_classes",
                                             "input_shape", "normalize", "splits", "proxy", "search_space", "criterion")}
        doc.update({k: getattr(self, k) for k, default in _OPTIONAL_KEYS.items() if getattr(self, k) != default})
        return doc


def _preset_names(package: str) -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))


def env_names() -> list[str]:
    """Names of the shipped environment presets."""
    return _preset_names("autoprune.envs")


def space_names() -> list[str]:
    """Names of the shipped search-space presets."""
    return _preset_names("autoprune.search_spaces")


def _read_yaml(name_or_path: str, package: str, kind: str, names: list[str]) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path).expanduser()
    if path.is_dir() and name_or_path not in names:
        raise ConfigError(f"{kind} {name_or_path!r} is a folder; pass a YAML file or one of {', '.join(names)}")
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{kind} file {name_or_path!r} does not exist")
        text, label = path.read_text(), path.stem
    elif name_or_path in names:
        text, label = resources.files(package).joinpath(f"{name_or_path}.yaml").read_text(), name_or_path
    else:
        raise ConfigError(f"unknown {kind} {name_or_path!r}; choose one of {', '.join(names)} or pass a YAML file")
    doc = load_yaml(text, f"{kind} {name_or_path!r}")
    if doc is None:
        raise ConfigError(f"{kind} {name_or_path!r} is empty; write a YAML mapping of its settings in it")
    if not isinstance(doc, dict):
        raise ConfigError(f"{kind} {name_or_path!r} must be a YAML mapping of settings, not a {type(doc).__name__}")
    return doc, label


def load_env(name_or_path: str = DEFAULT_ENV) -> EnvConfig:
    """Load an environment preset by name or YAML path.

    Raises:
        ConfigError: for an unknown preset, invalid YAML or missing keys.
    """
    doc, label = _read_yaml(name_or_path, "autoprune.envs", "env preset", env_names())
    unknown = set(doc) - _ENV_KEYS
    if unknown:
        raise ConfigError(f"env preset {label!r} has unknown keys {sorted(unknown)}; allowed: {sorted(_ENV_KEYS)}")
    missing = {"model", "dataset", "input_shape"} - set(doc)
    if missing:
        raise ConfigError(f"env preset {label!r} lacks required keys {sorted(missing)}")
    doc.setdefault("name", label)
    doc.setdefault("weights", None)
    problem = _env_problem(doc)
    if problem:
        raise ConfigError(f"env preset {label!r}: {problem}")
    return EnvConfig(**doc)


def calibration_image_count(proxy: dict[str, Any]) -> int:
    """How many images BatchNorm is recalibrated on under the proxy settings of an env (``calibration_images``,
    else ``calibration_batches`` x ``batch_size``; the Proxy's defaults 10 x 128)."""
    images = proxy.get("calibration_images")
    return images if images is not None else proxy.get("calibration_batches", 10) * proxy.get("batch_size", 128)


def _env_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with an env preset's values, or None."""
    shape = doc["input_shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return f"input_shape must be a list of positive integers such as [1, 3, 32, 32], got {shape!r}"
    if not isinstance(doc.get("num_classes", 10), int) or doc.get("num_classes", 10) < 1:
        return f"num_classes must be a positive integer, got {doc.get('num_classes')!r}"
    for key in ("model", "dataset"):
        if not isinstance(doc[key], str):
            return f"{key} must be a string, got {doc[key]!r}"
    splits = doc.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
        return f"splits must map proxy/report/calibration to split names, got {splits!r}"
    unknown = set(splits) - SPLIT_ROLES
    if unknown:
        return f"splits has unknown roles {sorted(unknown)}; allowed: {sorted(SPLIT_ROLES)}"
    proxy = doc.get("proxy", {})
    if not isinstance(proxy, dict):
        return f"proxy must be a mapping, got {proxy!r}"
    unknown = set(proxy) - PROXY_KEYS
    if unknown:
        return f"proxy has unknown keys {sorted(unknown)}; allowed: {sorted(PROXY_KEYS)}"
    if proxy.get("recover") not in (None, *RECOVERY_METHODS):
        return f"proxy recover must be one of {', '.join(RECOVERY_METHODS)}, got {proxy.get('recover')!r}"
    for key in ("images", "calibration_batches", "calibration_images", "report_images", "batch_size"):
        value = proxy.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"proxy {key} must be an integer, got {value!r}"
    return None


def load_space(name_or_path: str) -> SpaceConfig:
    """Load a search-space preset by name or YAML path.

    Raises:
        ConfigError: for an unknown preset, invalid YAML or bad bounds.
    """
    doc, label = _read_yaml(name_or_path, "autoprune.search_spaces", "search space", space_names())
    return SpaceConfig.from_dict(doc, name=label)
