"""Pruning policies and the versioned ``policy.json`` file.

A policy maps unit names (fully-qualified module names) to pruning ratios: the *fraction of output
channels removed*, as in Torch-Pruning and NNI (AMC's preserve ratio is one minus it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoprune.errors import PolicyError
from autoprune.io import atomic_write_text

POLICY_FORMAT = "autoprune-policy"
POLICY_VERSION = 1


class Policy(Mapping[str, float]):
    """An immutable ``unit name -> pruning ratio`` mapping, the object every part exchanges."""

    __slots__ = ("_ratios",)

    def __init__(self, ratios: Mapping[str, float]) -> None:
        for name, ratio in ratios.items():
            if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0.0 <= ratio < 1.0:
                raise PolicyError(f"pruning ratio of unit {name!r} must be in [0, 1), got {ratio!r}")
        self._ratios = {str(k): float(v) for k, v in ratios.items()}

    @classmethod
    def uniform(cls, names: list[str] | tuple[str, ...], ratio: float) -> Policy:
        """The policy that prunes every named unit by ``ratio``."""
        return cls({n: ratio for n in names})

    def __getitem__(self, name: str) -> float:
        return self._ratios[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ratios)

    def __len__(self) -> int:
        return len(self._ratios)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v:.3f}" for k, v in self._ratios.items())
        return f"Policy({{{inner}}})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._ratios == other._ratios

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._ratios.items())))


@dataclass
class PolicyRecord:
    """Everything ``policy.json`` holds: the policy plus what is needed to rebuild and judge it.

    Attributes:
        ratios: requested pruning ratio per unit.
        channels: per unit, ``{"dense": C, "kept": k}``: the channel counts actually achieved.
        model: zoo name of the network.
        input_shape: shape of one example input, batch dimension included.
        criterion: channel-selection criterion (a registered name: ``l1``, ``l2``, ``bn_scale``, ``lamp``, ``taylor``).
        round_to: channel rounding per unit.
        budget: the budget string, e.g. ``0.5flops``.
        metrics: measured metrics of the pruned network (FLOPs are MACs, counted by fvcore).
        found_by: how the policy was found (method, seed, evaluations, seconds).
        env: the environment preset it was searched on.
        weights: the checkpoint the network was loaded from.
        search_space: the search-space preset that defines the units.
    """

    ratios: dict[str, float]
    channels: dict[str, dict[str, int]]
    model: str
    input_shape: list[int]
    criterion: str
    round_to: dict[str, int]
    budget: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    found_by: dict[str, Any] = field(default_factory=dict)
    env: str | None = None
    weights: str | None = None
    search_space: str | None = None

    @property
    def policy(self) -> Policy:
        """The ratios as a :class:`Policy`."""
        return Policy(self.ratios)

    def save(self, path: str | Path) -> None:
        """Write the record as versioned JSON (written to a temporary file, then renamed)."""
        path = Path(path)
        doc = {"format": POLICY_FORMAT, "version": POLICY_VERSION, **asdict(self)}
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PolicyRecord:
        """Read a ``policy.json``.

        Raises:
            PolicyError: if the file is missing, not JSON, of another version, or lacks fields.
        """
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} does not exist; pass the policy.json of a search run")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PolicyError(f"policy file {str(path)!r} is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != POLICY_FORMAT:
            raise PolicyError(f"{str(path)!r} is not an autoprune policy file (no \"format\": \"{POLICY_FORMAT}\")")
        if doc.get("version") != POLICY_VERSION:
            raise PolicyError(
                f"policy file {str(path)!r} has version {doc.get('version')!r}; this autoprune reads version {POLICY_VERSION}"
            )
        fields = {k: v for k, v in doc.items() if k not in ("format", "version")}
        try:
            record = cls(**fields)
        except TypeError as e:
            raise PolicyError(f"policy file {str(path)!r} is malformed: {e}") from None
        problem = record._problem()
        if problem:
            raise PolicyError(f"policy file {str(path)!r} is malformed: {problem}")
        return record

    def _problem(self) -> str | None:
        """What is wrong with the record's fields, or None."""
        if not isinstance(self.ratios, dict) or not all(isinstance(k, str) for k in self.ratios):
            return "\"ratios\" must map unit names to numbers"
        try:
            Policy(self.ratios)
        except PolicyError as e:
            return str(e)
        if not isinstance(self.channels, dict):
            return "\"channels\" must map unit names to {\"dense\": C, \"kept\": k}"
        for name, ch in self.channels.items():
            if not isinstance(ch, dict) or not all(isinstance(ch.get(k), int) and not isinstance(ch.get(k), bool) for k in ("dense", "kept")):
                return f"channels of unit {name!r} must be {{\"dense\": C, \"kept\": k}} with integers, got {ch!r}"
            if not 1 <= ch["kept"] <= ch["dense"]:
                return f"unit {name!r} keeps {ch['kept']} of {ch['dense']} channels; kept must be in 1..dense"
        if not isinstance(self.model, str) or not isinstance(self.input_shape, list):
            return "\"model\" must be a string and \"input_shape\" a list"
        return None
