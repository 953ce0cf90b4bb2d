"""The searcher registry: method names to searcher classes.

Built-in methods register themselves when :mod:`autoprune.search` is imported; a user's searcher
joins them with :func:`register_searcher` and is then available everywhere a method is named: the
command line (``--method``), the benchmark (``--methods``) and the Python API.
"""

from __future__ import annotations

from typing import Any, TypeVar

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Evaluator
from autoprune.errors import ConfigError
from autoprune.search.base import Searcher, SearchResult

SEARCHERS: dict[str, type[Searcher]] = {}
"""Every registered searcher class by method name, in registration order."""

S = TypeVar("S", bound=type[Searcher])


def register_searcher(cls: S) -> S:
    """Register ``cls`` under ``cls.name`` (usable as a class decorator); returns ``cls``.

    Raises:
        ConfigError: if ``cls`` is not a :class:`Searcher` with a name, or the name is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Searcher)) or not getattr(cls, "name", ""):
        raise ConfigError(f"register_searcher needs a Searcher subclass with a `name`, got {cls!r}")
    if SEARCHERS.get(cls.name, cls) is not cls:
        raise ConfigError(f"search method {cls.name!r} is already registered by {SEARCHERS[cls.name].__qualname__}")
    SEARCHERS[cls.name] = cls
    return cls


def get_searcher(method: str) -> type[Searcher]:
    """The searcher class registered as ``method``.

    Raises:
        ConfigError: for an unknown method, listing the valid ones.
    """
    try:
        return SEARCHERS[method]
    except KeyError:
        raise ConfigError(f"unknown search method {method!r}; choose one of {', '.join(SEARCHERS)}") from None


def methods_where(trait: str) -> list[str]:
    """Names of the registered methods whose class has the boolean ``trait`` set."""
    return [name for name, cls in SEARCHERS.items() if getattr(cls, trait)]


def methods_accepting(option: str) -> list[str]:
    """Names of the registered methods that take the setting ``option``."""
    return [name for name, cls in SEARCHERS.items() if cls.accepts(option)]


def search_policy(evaluator: Evaluator, budget: Budget | str, method: str = "random", evals: int = 100, seed: int = 0,
                  **options: Any) -> SearchResult:
    """Search a policy that meets ``budget`` with the registered ``method`` on ``evaluator`` (the Python API's
    entry point; the command line adds a run directory and records).

    Args:
        evaluator: the shared Evaluator (``build_experiment(...).evaluator``, or one of your own).
        budget: a :class:`Budget` or its text (``"0.5flops"``).
        method: a registered method name.
        evals: evaluations to make.
        seed: seed of every random choice.
        **options: the method's own settings (its ``options``: ``sampler="cmaes"``, ``warmup=20``, ...).

    Raises:
        AutopruneError: for an unknown method or option, a malformed or unreachable budget.
    """
    cls = get_searcher(method)
    unknown = sorted(k for k in options if not cls.accepts(k))
    if unknown:
        raise ConfigError(f"--method {method} takes no option {', '.join(unknown)}; it takes "
                          f"{', '.join(o.name for o in cls.options) or 'none'}")
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    return cls(evaluator, budget, evals=evals, seed=seed, **options).search()
