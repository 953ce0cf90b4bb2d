"""Networks by spec: the zoo (CIFAR ResNets, the digits demo CNN), torchvision and timm classifiers, your own code."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from torch import nn

from autoprune.errors import ConfigError
from autoprune.zoo.cifar_resnet import CIFAR_RESNET_DEPTHS, CifarResNet
from autoprune.zoo.digits import DigitsCNN

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FORMS = "file.py:CALLABLE or package.module:CALLABLE"


def zoo_names() -> list[str]:
    """The model specs :func:`build_model` accepts (the last four are forms, not names)."""
    return [f"resnet{d}" for d in CIFAR_RESNET_DEPTHS] + [
        "digits-cnn", f"{TORCHVISION_PREFIX}NAME", f"{TIMM_PREFIX}NAME", "file.py:CALLABLE", "module:CALLABLE"]


def _user_spec(spec: str) -> tuple[str, str, str] | None:
    """``(kind, target, callable)`` for ``file.py:CALLABLE`` (kind ``file``) or ``package.module:CALLABLE``
    (kind ``module``); None for any other spec."""
    if spec.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)) or ":" not in spec:
        return None
    target, _, name = spec.rpartition(":")
    if not target or not re.fullmatch(_DOTTED, name):
        return None
    if target.endswith(".py") or "/" in target or "\\" in target:
        return "file", target, name
    if re.fullmatch(_DOTTED, target):
        return "module", target, name
    return None


def is_user_model(spec: str) -> bool:
    """Whether ``spec`` names the user's own code (``file.py:CALLABLE`` or ``package.module:CALLABLE``)."""
    return _user_spec(spec) is not None


def build_model(spec: str, num_classes: int = 10, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Build an untrained network from its spec.

    Args:
        spec: ``resnet20`` ... ``resnet110`` (CIFAR, option-A), ``digits-cnn``, ``torchvision:NAME`` for
            any torchvision classification model, ``timm:NAME`` (needs timm), ``path/to/file.py:CALLABLE``
            or ``package.module:CALLABLE`` (a class or function of your own that returns the network).
        num_classes: size of the classifier output (zoo, torchvision and timm models; your own callable
            gets only ``model_args``).
        model_args: keyword arguments for the constructor (torchvision, timm and your own models).

    Raises:
        ConfigError: if the spec names no model, or the model cannot be built with ``model_args``.
    """
    args = dict(model_args or {})
    if user := _user_spec(spec):
        return _build_user_model(spec, *user, args)
    if spec.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(spec.removeprefix(TORCHVISION_PREFIX), num_classes, args)
    if spec.startswith(TIMM_PREFIX):
        return _build_timm(spec.removeprefix(TIMM_PREFIX), num_classes, args).eval()
    model: nn.Module | None = None
    if (m := re.fullmatch(r"resnet(\d+)", spec)) and int(m[1]) in CIFAR_RESNET_DEPTHS:
        model = CifarResNet(int(m[1]), num_classes)
    elif spec == "digits-cnn":
        model = DigitsCNN(num_classes)
    if model is None:
        raise ConfigError(f"unknown model {spec!r}; choose one of {', '.join(zoo_names())}")
    if args:
        raise ConfigError(f"--model-args {_show(args)} do not apply to zoo model {spec}; drop them, or use "
                          f"torchvision:NAME, timm:NAME or {_FORMS}")
    return model


def _build_torchvision(arch: str, num_classes: int, args: dict[str, Any]) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ConfigError(
            f"unknown torchvision model {arch!r}; classification models include "
            f"{', '.join(a for a in available if a in ('resnet18', 'resnet50', 'mobilenet_v2', 'vgg11_bn', 'efficientnet_b0'))}, ..."
        )
    _refuse_reserved(f"{TORCHVISION_PREFIX}{arch}", args, ("num_classes", "weights"))
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **args)
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"{TORCHVISION_PREFIX}{arch} rejected --model-args {_show(args)} ({_first(e)}); "
                          f"pass arguments its constructor takes") from None


def _build_timm(name: str, num_classes: int, args: dict[str, Any]) -> nn.Module:
    timm = _import_timm(name)
    _refuse_reserved(f"{TIMM_PREFIX}{name}", args, ("num_classes", "pretrained"))
    if not timm.is_model(name) and not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"unknown timm model {name!r}; list them with timm.list_models() (e.g. resnet18, "
                          f"vit_tiny_patch16_224)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **args)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as e:
        raise ConfigError(f"{TIMM_PREFIX}{name} could not be built with --model-args {_show(args)} ({_first(e)}); "
                          f"pass arguments its constructor takes") from None


def _import_timm(name: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"{TIMM_PREFIX}{name} needs the timm package: pip install 'autoprune[timm]'") from None
    return timm


def _refuse_reserved(spec: str, args: Mapping[str, Any], reserved: tuple[str, ...]) -> None:
    if taken := [k for k in reserved if k in args]:
        raise ConfigError(f"--model-args may not set {', '.join(taken)} for {spec}; autoprune sets it "
                          f"(num_classes from the env, weights with --weights)")


def _build_user_model(spec: str, kind: str, target: str, name: str, args: dict[str, Any]) -> nn.Module:
    """Import the user's file or module, call ``name(**args)`` and check that it made a network."""
    folder: Path | None = None
    if kind == "file":
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {target!r} not found (from --model {spec}); pass an existing "
                              f"{_FORMS}")
        folder = path.resolve().parent
        module = _import_file(path, spec)
        where = f"model file {target!r}"
    else:
        module = _import_module(target, spec)
        where = f"module {target!r}"
    factory: Any = module
    for part in name.split("."):
        factory = getattr(factory, part, None)
    if factory is None or not callable(factory):
        found = _callables(module)
        listing = f"it defines {', '.join(found[:8])}{', ...' if len(found) > 8 else ''}" if found \
            else "it defines no public class or function"
        raise ConfigError(f"{where} has no callable {name!r}; {listing}: name one after the ':' in --model")
    try:
        with _on_path(folder):
            model = factory(**args)
    except Exception as e:  # noqa: BLE001  (the user's code can raise anything)
        raise ConfigError(f"{name}({_show_call(args)}) from your code in {where} raised {type(e).__name__}: "
                          f"{_first(e, with_type=False)}; fix the model code or --model-args") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name}({_show_call(args)}) in {where} returned {type(model).__module__}."
                          f"{type(model).__qualname__}, not a torch.nn.Module; make it return the network")
    return model.eval()


def _import_file(path: Path, spec: str) -> ModuleType:
    """Import a Python file as a module under a name unique to its path and content version."""
    resolved = path.resolve()
    stat = resolved.stat()
    digest = hashlib.sha1(f"{resolved}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", resolved.stem)
    unique = f"autoprune_user_model_{stem}_{digest}"
    if isinstance(sys.modules.get(unique), ModuleType):
        return sys.modules[unique]
    loader_spec = importlib.util.spec_from_file_location(unique, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"model file {str(path)!r} cannot be imported as Python; pass a .py file in --model")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[unique] = module  # dataclasses, pickling and typing look their module up by name
    try:
        with _on_path(resolved.parent):
            loader_spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001  (SystemExit from a script's main guard included)
        del sys.modules[unique]
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ConfigError(f"model file {str(path)!r} failed to import ({_first(e)}); fix the file "
                          f"(--model {spec})") from None
    return module


def _import_module(target: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise ConfigError(f"module {target!r} is not importable ({_first(e)}); install it or put its "
                              f"folder on PYTHONPATH (--model {spec})") from None
        raise ConfigError(f"module {target!r} failed to import ({_first(e)}); install what it needs "
                          f"(--model {spec})") from None
    except Exception as e:  # noqa: BLE001  (the user's module can raise anything at import)
        raise ConfigError(f"module {target!r} failed to import ({_first(e)}); fix the module "
                          f"(--model {spec})") from None


class _on_path:  # noqa: N801  (a context manager used like a function)
    """Put ``folder`` first on ``sys.path`` for the duration (a user file's own imports), then take it out."""

    def __init__(self, folder: Path | None) -> None:
        self.entry = str(folder) if folder is not None else None

    def __enter__(self) -> None:
        if self.entry is not None:
            sys.path.insert(0, self.entry)

    def __exit__(self, *exc: object) -> None:
        if self.entry is not None and self.entry in sys.path:
            sys.path.remove(self.entry)


def _callables(module: ModuleType) -> list[str]:
    """The public classes and functions ``module`` defines itself, networks first."""
    own = [(n, o) for n, o in vars(module).items() if not n.startswith("_") and callable(o)
           and (inspect.isclass(o) or inspect.isfunction(o)) and getattr(o, "__module__", None) == module.__name__]
    networks_first = sorted(own, key=lambda item: not (inspect.isclass(item[1]) and issubclass(item[1], nn.Module)))
    return [n for n, _ in networks_first]


def _first(error: BaseException, with_type: bool = True) -> str:
    """``Type: first line of the message`` of an exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if not with_type:
        return text or "(no message)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _show(args: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in args.items()) or "(none)"


def _show_call(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def parse_model_args(text: str) -> dict[str, Any]:
    """Read ``--model-args``: ``K=V,K=V`` with each value a YAML scalar (``dim=256,act=gelu,bias=true``).

    Raises:
        ConfigError: for an item that is not ``KEY=VALUE``, a key given twice, or a value that is a list or mapping.
    """
    args: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ConfigError(f"--model-args item {item.strip()!r} is not KEY=VALUE; write K=V,K=V with a "
                              f"Python name as each key (dim=256,act=gelu,bias=true)")
        try:
            value = yaml.safe_load(raw.strip()) if raw.strip() else None
        except yaml.YAMLError:
            value = []  # not a YAML scalar either
        if isinstance(value, (list, dict)):
            raise ConfigError(f"--model-args item {item.strip()!r} has no scalar value; write K=V,K=V with one "
                              f"number, word or true/false per value (dim=256,act=gelu,bias=true)")
        if key in args:
            raise ConfigError(f"--model-args sets {key!r} twice; give each key once (K=V,K=V)")
        args[key] = value
    return args


Preprocessing = tuple[int, tuple[float, float, float], tuple[float, float, float], int]
"""(crop size, mean, std, resize size) of a model's published evaluation transform."""


def model_preprocessing(spec: str, weights: str | None) -> Preprocessing | None:
    """The evaluation transform pretrained weights expect, read without downloading anything.

    Args:
        spec: the model spec.
        weights: the weights name (a torchvision one such as ``IMAGENET1K_V1``) or checkpoint path.

    Returns:
        ``(crop size, mean, std, resize size)`` for ``torchvision:NAME`` with a torchvision weights name and
        for ``timm:NAME`` when timm is installed; None for anything else.
    """
    if spec.startswith(TORCHVISION_PREFIX) and weights:
        return _torchvision_preprocessing(spec.removeprefix(TORCHVISION_PREFIX), weights)
    if spec.startswith(TIMM_PREFIX):
        return _timm_preprocessing(spec.removeprefix(TIMM_PREFIX))
    return None


def _torchvision_preprocessing(arch: str, weights: str) -> Preprocessing | None:
    import torchvision

    try:
        entry = torchvision.models.get_model_weights(arch)[weights.split(".")[-1]]
        transform = entry.transforms()
        crop, resize = transform.crop_size, transform.resize_size
        crop = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
        resize = int(resize[0] if isinstance(resize, (list, tuple)) else resize)
        return crop, _triple(transform.mean), _triple(transform.std), resize
    except (KeyError, ValueError, AttributeError, TypeError, IndexError):
        return None


def _timm_preprocessing(name: str) -> Preprocessing | None:
    try:
        import timm
        import timm.data
    except ImportError:
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None:
            config = timm.data.resolve_data_config({}, pretrained_cfg=cfg.to_dict())
        else:
            config = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))
        crop = int(config["input_size"][-1])
        resize = int(crop / float(config.get("crop_pct") or 1.0))
        return crop, _triple(config["mean"]), _triple(config["std"]), resize
    except Exception:  # noqa: BLE001  (an unknown or unusual timm model: no published transform)
        return None


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
