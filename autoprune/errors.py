"""The project's exception hierarchy.

Every error a user can cause by a bad value raises a subclass of :class:`AutopruneError` whose message
says what is wrong and what to do. The CLI prints that message on one line and exits non-zero.
"""


class AutopruneError(Exception):
    """Base class of every user-facing autoprune error."""


class ConfigError(AutopruneError):
    """An unknown preset, model, method or option value."""


class BudgetError(AutopruneError):
    """A malformed budget, or one the search space cannot reach."""


class DataError(AutopruneError):
    """Missing or unreadable data."""


class WeightsError(AutopruneError):
    """Missing, corrupt or mismatched checkpoints."""


class PolicyError(AutopruneError):
    """A malformed policy file, or one that does not fit the model."""


class UnsupportedModelError(AutopruneError):
    """A model with no prunable unit, or a layer autoprune cannot prune."""
