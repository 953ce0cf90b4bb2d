"""autoprune: how many channels each layer of a trained network should keep to meet a budget.

The public Python API, each name loaded on first use (so ``autoprune --help`` stays fast)::

    from autoprune import Budget, build_experiment, search_policy

    exp = build_experiment("digits-demo")               # or your own model: see Evaluator
    result = search_policy(exp.evaluator, "0.5flops", method="random", evals=50, seed=0)
    pruned = exp.evaluator.build(result.best.policy)    # a physically smaller nn.Module

The packages follow the data flow: ``zoo`` (models, weights, data) -> ``core`` (space, policy, pruner,
cost, proxy, Evaluator) -> ``search`` (searchers) -> ``run`` (the run's record) -> ``finetune`` and
``export``; ``bench`` compares searchers. See ``docs/architecture.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "autoprune.core.budget",
    "Policy": "autoprune.core.policy",
    "PolicyRecord": "autoprune.core.policy",
    "SearchSpace": "autoprune.core.space",
    "SpaceConfig": "autoprune.core.space",
    "Proxy": "autoprune.core.proxy",
    "Evaluator": "autoprune.core.evaluator",
    "Candidate": "autoprune.core.evaluator",
    "LatencySettings": "autoprune.core.cost",
    "register_criterion": "autoprune.core.importance",
    "ImageSet": "autoprune.zoo.images",
    "Experiment": "autoprune.experiment",
    "DataOptions": "autoprune.experiment",
    "build_experiment": "autoprune.experiment",
    "Searcher": "autoprune.search",
    "SearchOption": "autoprune.search",
    "SearchResult": "autoprune.search",
    "register_searcher": "autoprune.search",
    "get_searcher": "autoprune.search",
    "search_policy": "autoprune.search",
    "export_policy": "autoprune.export.formats",
    "AutopruneError": "autoprune.errors",
}

__all__ = [
    "AutopruneError",
    "Budget",
    "Candidate",
    "DataOptions",
    "Evaluator",
    "Experiment",
    "ImageSet",
    "LatencySettings",
    "Policy",
    "PolicyRecord",
    "Proxy",
    "SearchOption",
    "SearchResult",
    "SearchSpace",
    "Searcher",
    "SpaceConfig",
    "build_experiment",
    "export_policy",
    "get_searcher",
    "register_criterion",
    "register_searcher",
    "search_policy",
]

if TYPE_CHECKING:
    from autoprune.core.budget import Budget
    from autoprune.core.cost import LatencySettings
    from autoprune.core.evaluator import Candidate, Evaluator
    from autoprune.core.importance import register_criterion
    from autoprune.core.policy import Policy, PolicyRecord
    from autoprune.core.proxy import Proxy
    from autoprune.core.space import SearchSpace, SpaceConfig
    from autoprune.errors import AutopruneError
    from autoprune.experiment import DataOptions, Experiment, build_experiment
    from autoprune.export.formats import export_policy
    from autoprune.search import Searcher, SearchOption, SearchResult, get_searcher, register_searcher, search_policy
    from autoprune.zoo.images import ImageSet


def __getattr__(name: str) -> Any:
    """Load a public name from the module that defines it, on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
