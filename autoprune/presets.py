"""Environment and search-space presets: YAML files shipped in ``envs/`` and ``search_spaces/``.

A preset is named (``resnet56-cifar10``) or given as a path to a YAML file of the same form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import ConfigError
from autoprune.space import SpaceConfig

DEFAULT_ENV = "digits-demo"
_ENV_KEYS = {"name", "description", "model", "weights", "dataset", "num_classes", "input_shape", "normalize",
             "splits", "proxy", "search_space", "criterion"}


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

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration, as written to a run's ``config.yaml``."""
        return {k: getattr(self, k) for k in ("name", "description", "model", "weights", "dataset", "num_classes",
                                              "input_shape", "normalize", "splits", "proxy", "search_space", "criterion")}


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
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{kind} file {name_or_path!r} does not exist")
        text, label = path.read_text(), path.stem
    elif name_or_path in names:
        text, label = resources.files(package).joinpath(f"{name_or_path}.yaml").read_text(), name_or_path
    else:
        raise ConfigError(f"unknown {kind} {name_or_path!r}; choose one of {', '.join(names)} or pass a YAML file")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{kind} {name_or_path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{kind} {name_or_path!r} must be a YAML mapping")
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
    return EnvConfig(**doc)


def load_space(name_or_path: str) -> SpaceConfig:
    """Load a search-space preset by name or YAML path.

    Raises:
        ConfigError: for an unknown preset, invalid YAML or bad bounds.
    """
    doc, label = _read_yaml(name_or_path, "autoprune.search_spaces", "search space", space_names())
    return SpaceConfig.from_dict(doc, name=label)
