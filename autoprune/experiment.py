"""Assembling the parts an environment preset names: network, weights, data splits, space, Evaluator."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.console import status
from autoprune.core.cost import LatencySettings
from autoprune.core.evaluator import Evaluator
from autoprune.core.importance import needs_gradients
from autoprune.core.latency_table import latency_table_for
from autoprune.core.proxy import Proxy, predict, recalibrate_batchnorm
from autoprune.core.prune import Pruner
from autoprune.core.racing import Racing
from autoprune.core.reconstruct import Reconstructor
from autoprune.core.space import SearchSpace
from autoprune.errors import ConfigError
from autoprune.presets import DEFAULT_ENV, EnvConfig, calibration_image_count, load_env, load_space
from autoprune.zoo.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    folder_classes,
    folder_image_size,
    folder_splits,
    load_split,
)
from autoprune.zoo.digits import pretrained_digits_cnn
from autoprune.zoo.images import ImageSet
from autoprune.zoo.models import build_model, is_user_model, model_preprocessing
from autoprune.zoo.weights import load_weights

BUILTIN_WEIGHTS = "builtin"


@dataclass
class DataOptions:
    """Where data and weights come from, and how checkpoints are read."""

    data_dir: str | Path | None = None
    weights_dir: str | Path | None = None
    download: bool = False
    trust_checkpoint: bool = False


@dataclass
class Experiment:
    """One network with its data, search space and Evaluator, as an environment preset describes."""

    config: EnvConfig
    model: nn.Module
    weights_source: str
    example_inputs: torch.Tensor
    space: SearchSpace
    evaluator: Evaluator
    options: DataOptions = field(default_factory=DataOptions)

    @property
    def unseen(self) -> ImageSet | None:
        """The proxy split's images after the proxy's own (None or empty: the proxy uses all of them); no candidate's
        proxy score uses them, so the final choice among a search's best candidates can (:mod:`autoprune.run.confirm`)."""
        return self.evaluator.held_out

    @classmethod
    def from_config(
        cls,
        config: EnvConfig,
        options: DataOptions | None = None,
        device: str = "cpu",
        latency: LatencySettings | None = None,
    ) -> Experiment:
        """:func:`build_experiment` of a resolved configuration (no overrides, latency measured)."""
        return build_experiment(config, data=options, device=device, latency=latency)

    def split(self, role_or_name: str) -> ImageSet:
        """A data split by role (``proxy``, ``report``, ``calibration``) or by split name; the report role holds
        the first ``report_images`` of its split when the proxy settings name a count."""
        name = self.config.splits.get(role_or_name, role_or_name)
        split = load_split(self.config.dataset, name, self.options.data_dir, self.options.download, *_norm(self.config),
                           **(_folder_options(self.config, role_or_name) if role_or_name in self.config.splits else {}))
        report_images = self.config.proxy.get("report_images")
        if role_or_name == "report" and report_images is not None:
            split = split.subset(torch.arange(min(report_images, len(split))))
        return split

    def accuracy(self, network: nn.Module, split: str = "report", recalibrate: bool = True) -> float:
        """Top-1 accuracy of ``network`` on a split, after BN recalibration on the Evaluator's batches."""
        network = network.to(self.evaluator.proxy.device)
        if recalibrate:
            recalibrate_batchnorm(network, self.evaluator.proxy.calibration)
        data = self.split(split)
        images, labels = data.batch(slice(None), self.evaluator.proxy.device)
        return (predict(network, images, self.evaluator.proxy.batch_size) == labels).float().mean().item()


OVERRIDES = ("model", "model_args", "weights", "data", "input_size", "mean", "std", "search_space", "criterion",
             "proxy_images", "report_images", "calibration_images", "proxy_forward")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER_PROXY = {"kind": "accuracy", "images": 1000, "calibration_batches": 4, "batch_size": 64}
"""The proxy of a user's image folder when no env preset names one: 1,000 proxy images, 256 calibration images."""


def build_experiment(
    env: str | Path | EnvConfig = DEFAULT_ENV,
    overrides: Mapping[str, Any] | None = None,
    *,
    data: DataOptions | None = None,
    device: str = "cpu",
    latency: LatencySettings | None = None,
    latency_model: str | None = None,
    racing: str = "off",
) -> Experiment:
    """The one way to assemble an experiment: network and weights, data splits, search space, pruner, cost model,
    proxy, recovery, latency model and the Evaluator that holds them.

    Args:
        env: an env preset name, a YAML file, or a resolved :class:`EnvConfig`.
        overrides: command-line overrides of the preset (see :func:`configure`); None values are ignored.
        data: where data and weights come from.
        device: where the proxy runs.
        latency: latency settings; when given, every candidate's latency is measured.
        latency_model: ``lut`` prices latency with the (cached) lookup table; ``measure`` or None time each
            network.
        racing: the Evaluator's racing stages: ``off``, ``on`` (a quarter, half and all of the proxy images) or
            ascending image counts such as ``250,500`` (see :class:`~autoprune.core.racing.Racing`).

    Raises:
        AutopruneError: for an unknown preset or model, missing or mismatched weights, missing data, a bad
            space or override.
    """
    config = configure(env, overrides)
    data = data or DataOptions()
    if data.data_dir is not None and not data.download and not Path(data.data_dir).expanduser().is_dir():
        raise ConfigError(f"data folder {str(data.data_dir)!r} (--data-dir) does not exist; pass an existing folder, "
                          f"or add --download to fetch public data into it")
    status(f"loading env {config.name} ({config.model})")
    model, source = load_network(config, data)
    example_inputs = torch.zeros(config.input_shape)
    status("building the search space")
    space = SearchSpace.from_model(model, example_inputs, load_space(config.search_space))
    status(f"loading the {config.dataset} data")
    proxy_settings = dict(config.proxy)
    proxy_split = _split(config, "proxy", data)
    n_images = proxy_settings.pop("images", None)
    recover = proxy_settings.pop("recover", None) or "bn"
    proxy_settings.pop("report_images", None)  # the report split's size (see Experiment.split)
    used = len(proxy_split) if n_images is None else min(n_images, len(proxy_split))
    unseen = proxy_split.subset(torch.arange(used, len(proxy_split)))
    if used < len(proxy_split):
        proxy_split = proxy_split.subset(torch.arange(used))
    calibration = _split(config, "calibration", data)
    proxy = Proxy(calibration, proxy_split, device=device, **proxy_settings)
    criterion = config.criterion
    pruner = Pruner(model, example_inputs, space, criterion, proxy.calibration if needs_gradients(criterion) else None)
    recovery = None
    if recover == "reconstruct":
        recovery = Reconstructor(model, example_inputs, space, pruner,
                                 torch.cat(proxy.calibration) if proxy.calibration else torch.empty(0))
    table = None
    if latency_model == "lut":
        table = latency_table_for(model, example_inputs, space, latency, pruner.prune)
    evaluator = Evaluator(model, example_inputs, space, proxy, criterion, latency, pruner=pruner, recovery=recovery,
                          latency_table=table, racing=Racing.parse(racing, len(proxy)), held_out=unseen)
    return Experiment(config, model, source, example_inputs, space, evaluator, data)


def configure(env: str | Path | EnvConfig | None, overrides: Mapping[str, Any] | None = None) -> EnvConfig:
    """The env preset (a name, a YAML file or a configuration) with the given overrides applied (a copy).

    Overrides (None values are ignored): ``model`` (a zoo name, ``torchvision:NAME``, ``timm:NAME``,
    ``file.py:CALLABLE`` or ``module:CALLABLE``), ``model_args`` (keyword arguments of a callable),
    ``weights``, ``data`` (an image folder with ``train/`` and ``val/`` or ``test/``: calibration on
    ``train``, proxy and report on two fixed halves of ``val``; the number of classes is its class folders'),
    ``input_size``, ``mean``, ``std`` (default: the model's own preprocessing for torchvision and timm
    weights, else the images' size and ImageNet statistics), ``search_space``, ``criterion``,
    ``proxy_images``, ``report_images``, ``calibration_images``, ``proxy_forward`` (``fast`` or ``plain``, see
    :class:`~autoprune.core.proxy.Proxy`). Without ``env``, ``data`` and ``model`` make
    the configuration (the default preset otherwise).

    Raises:
        ConfigError: for an unknown preset or override, or a data folder without a model.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown experiment override {unknown[0]!r}; choose among {', '.join(OVERRIDES)}")
    if env is None and "data" in overrides:
        if "model" not in overrides:
            raise ConfigError("--data needs --model: your network (a zoo name, torchvision:NAME, timm:NAME, "
                              "file.py:CALLABLE or module:CALLABLE)")
        root = Path(overrides["data"]).expanduser().resolve()
        config = EnvConfig(name=root.name, model=overrides["model"], weights=None, dataset="", input_shape=[],
                           proxy=dict(FOLDER_PROXY), search_space="all-convs",
                           description=f"your model on the image folder {root}")
    else:
        config = copy.deepcopy(env) if isinstance(env, EnvConfig) else load_env(str(env or DEFAULT_ENV))
    for key in ("model", "model_args", "weights", "search_space", "criterion"):
        if key in overrides:
            setattr(config, key, overrides[key])
    if is_user_model(config.model):  # a file path is made absolute, so a resumed run finds it from anywhere
        file, _, call = config.model.rpartition(":")
        if file.endswith(".py"):
            config.model = f"{Path(file).expanduser().resolve()}:{call}"
    sizes = {"proxy_images": "images", "report_images": "report_images", "calibration_images": "calibration_images",
             "proxy_forward": "forward"}
    config.proxy = {**config.proxy, **{sizes[k]: overrides[k] for k in sizes if k in overrides}}
    _check_image_counts(config.proxy)
    _whole_calibration_batches(config.proxy)
    if "data" in overrides:
        _use_folder(config, Path(overrides["data"]).expanduser().resolve(), overrides.get("input_size"))
    elif "input_size" in overrides:
        config.input_shape = [*config.input_shape[:-2], overrides["input_size"], overrides["input_size"]]
    if "mean" in overrides or "std" in overrides:
        config.normalize = {"mean": list(overrides.get("mean", _norm(config)[0])),
                            "std": list(overrides.get("std", _norm(config)[1]))}
    return config


def _check_image_counts(proxy: Mapping[str, Any]) -> None:
    """Refuse image counts that cannot be met, before any data is loaded."""
    for key, least, option in (("images", 1, "--proxy-images"), ("report_images", 1, "--report-images"),
                               ("calibration_images", 0, "--calibration-images")):
        value = proxy.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{option} (proxy {key}) must be a whole number >= {least}, got {value!r}")


def _whole_calibration_batches(proxy: dict[str, Any]) -> None:
    """Write a calibration image count that fills whole batches as ``calibration_batches`` (in place), so that
    ``--calibration-images 512`` on a preset of 128-image batches is the same configuration as
    ``calibration_batches: 4`` (a benchmark made with it resumes)."""
    images, batch = proxy.get("calibration_images"), proxy.get("batch_size", 128)
    if images is not None and images % batch == 0:
        proxy["calibration_batches"] = images // batch
        del proxy["calibration_images"]


def _use_folder(config: EnvConfig, root: Path, input_size: int | None) -> None:
    """Point ``config`` at a user's image folder: splits, classes, input size and normalisation."""
    classes = folder_classes(root)
    config.dataset = f"imagefolder:{root}"
    config.splits = folder_splits(root)
    config.num_classes = len(classes)
    preprocessing = model_preprocessing(config.model, config.weights)
    if input_size is not None:
        height = width = input_size
    elif preprocessing is not None:
        height = width = preprocessing[0]
        config.resize_size = preprocessing[3]
    else:
        shared = folder_image_size(root, "train")
        if shared is None:
            raise ConfigError(f"the images in {str(root / 'train')!r} differ in size; pass --input-size N (they are "
                              f"resized and centre-cropped to N x N)")
        height, width = shared
    config.input_shape = [1, 3, height, width]
    mean, std = (preprocessing[1], preprocessing[2]) if preprocessing is not None else (IMAGENET_MEAN, IMAGENET_STD)
    config.normalize = {"mean": list(mean), "std": list(std)}


def load_network(config: EnvConfig, options: DataOptions) -> tuple[nn.Module, str]:
    """The preset's network with its weights loaded, and where the weights came from; its input shape and class
    count are checked before the weights (a wrong class count is the clearer message)."""
    model = build_model(config.model, config.num_classes, config.model_args)
    _check_runs(model, torch.zeros(config.input_shape), config)
    if config.weights == BUILTIN_WEIGHTS:
        if config.model != "digits-cnn":
            raise ConfigError(f"weights 'builtin' exist only for digits-cnn, not {config.model}; pass --weights")
        return pretrained_digits_cnn(), "builtin (trained at first use, cached)"
    if config.weights is None:
        raise ConfigError(f"env {config.name!r} names no weights for {config.model}; pass --weights")
    source = load_weights(model, config.model, config.weights, options.weights_dir, options.trust_checkpoint)
    return model.eval(), source


def _check_runs(model: nn.Module, example_inputs: torch.Tensor, config: EnvConfig) -> None:
    try:
        with torch.no_grad():
            output = model.eval()(example_inputs)
    except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"input_shape {config.input_shape} of env {config.name!r} does not fit model {config.model} ({first})"
        ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise ConfigError(f"model {config.model} must return class scores of shape (batch, classes), got "
                          f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}")
    if output.shape[1] != config.num_classes:
        raise ConfigError(f"model {config.model} outputs {output.shape[1]} classes but the data has "
                          f"{config.num_classes}; pass a model (or --model-args) with {config.num_classes} outputs")


def _norm(config: EnvConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(config.normalize.get("mean", CIFAR10_MEAN))
    std = tuple(config.normalize.get("std", CIFAR10_STD))
    return mean, std


def _split(config: EnvConfig, role: str, options: DataOptions) -> ImageSet:
    if role not in config.splits:
        raise ConfigError(f"env {config.name!r} names no {role} split (splits: {config.splits})")
    return load_split(config.dataset, config.splits[role], options.data_dir, options.download, *_norm(config),
                      **_folder_options(config, role))


def _folder_options(config: EnvConfig, role: str) -> dict[str, Any]:
    """For a user's image folder: only the images a role uses, resized and cropped to the model's input (the
    built-in data sets load whole splits, as their committed benchmarks did)."""
    if not config.dataset.startswith("imagefolder:"):
        return {}
    proxy = config.proxy
    images = {"proxy": proxy.get("images"), "report": proxy.get("report_images"),
              "calibration": calibration_image_count(proxy)}
    height, width = config.input_shape[-2:]
    return {"images": images.get(role), "input_size": height if height == width else None,
            "resize_size": config.resize_size}
