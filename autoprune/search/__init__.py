"""Searchers by method name; every one runs on the shared Evaluator and one Budget."""

from __future__ import annotations

from autoprune.search.base import Searcher, SearchOption, SearchResult
from autoprune.search.evolution import EvolutionSearcher
from autoprune.search.netadapt import NetAdaptSearcher
from autoprune.search.optuna_search import SAMPLERS, OptunaSearcher
from autoprune.search.random import RandomSearcher
from autoprune.search.registry import (
    SEARCHERS,
    get_searcher,
    methods_accepting,
    methods_where,
    register_searcher,
    search_policy,
)
from autoprune.search.rl import RL_SEARCHERS, RLSearcher
from autoprune.search.sensitivity import SensitivitySearcher
from autoprune.search.tp_global import TorchPruningGlobalSearcher
from autoprune.search.uniform import UniformSearcher

for _cls in (UniformSearcher, RandomSearcher, SensitivitySearcher, NetAdaptSearcher, OptunaSearcher, EvolutionSearcher,
             TorchPruningGlobalSearcher, *RL_SEARCHERS):
    register_searcher(_cls)

__all__ = ["RL_SEARCHERS", "SAMPLERS", "SEARCHERS", "EvolutionSearcher", "NetAdaptSearcher", "OptunaSearcher", "RLSearcher", "RandomSearcher",
           "SearchOption", "SearchResult", "Searcher", "SensitivitySearcher", "TorchPruningGlobalSearcher", "UniformSearcher", "get_searcher",
           "methods_accepting", "methods_where", "register_searcher", "search_policy"]
