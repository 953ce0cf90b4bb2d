"""Searchers by method name; every one runs on the shared Evaluator and one Budget."""

from __future__ import annotations

from autoprune.errors import ConfigError
from autoprune.search.base import SearchResult, Searcher
from autoprune.search.netadapt import NetAdaptSearcher
from autoprune.search.optuna_search import SAMPLERS, OptunaSearcher
from autoprune.search.random import RandomSearcher
from autoprune.search.rl import RL_SEARCHERS, RLSearcher
from autoprune.search.sensitivity import SensitivitySearcher
from autoprune.search.uniform import UniformSearcher

SEARCHERS: dict[str, type[Searcher]] = {
    cls.name: cls for cls in (UniformSearcher, RandomSearcher, SensitivitySearcher, NetAdaptSearcher, OptunaSearcher)
}
SEARCHERS.update({cls.name: cls for cls in RL_SEARCHERS})


def get_searcher(method: str) -> type[Searcher]:
    """The searcher class registered as ``method``.

    Raises:
        ConfigError: for an unknown method, listing the valid ones.
    """
    try:
        return SEARCHERS[method]
    except KeyError:
        raise ConfigError(f"unknown search method {method!r}; choose one of {', '.join(SEARCHERS)}") from None


__all__ = ["RL_SEARCHERS", "SAMPLERS", "SEARCHERS", "NetAdaptSearcher", "OptunaSearcher", "RLSearcher", "RandomSearcher",
           "SearchResult", "Searcher", "SensitivitySearcher", "UniformSearcher", "get_searcher"]
