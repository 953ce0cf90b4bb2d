"""Rebuilding a recorded policy's network: where the policy is, whether it fits a network, and loading
saved weights into the rebuilt network."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from autoprune.core.policy import PolicyRecord
from autoprune.core.space import SearchSpace
from autoprune.errors import PolicyError, WeightsError
from autoprune.zoo.weights import read_state_dict

POLICY_FILE = "policy.json"


def policy_file(path: str | Path) -> Path:
    """The ``policy.json`` a user names: the file itself, or the one inside a run directory.

    Raises:
        PolicyError: if a directory holds no ``policy.json`` or the path does not exist.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / POLICY_FILE).is_file():
            raise PolicyError(f"run directory {str(path)!r} holds no {POLICY_FILE}")
        return path / POLICY_FILE
    if not path.is_file():
        raise PolicyError(f"policy {str(path)!r} does not exist; pass a policy.json or a run directory")
    return path


def check_fits(record: PolicyRecord, space: SearchSpace, model: str, space_name: str) -> None:
    """Raise :class:`PolicyError` unless every unit the policy names (in ``ratios`` or ``channels``) is a unit of
    ``space`` with the same channels."""
    missing = [n for n in dict.fromkeys([*record.ratios, *record.channels]) if n not in space.names]
    if missing:
        raise PolicyError(f"policy units {missing[:3]} are not in {model}'s search space {space_name!r}; "
                          f"this policy was made for another network or space")
    for unit in space.units:
        dense = record.channels.get(unit.name, {}).get("dense", unit.channels)
        if dense != unit.channels:
            raise PolicyError(f"policy says unit {unit.name!r} has {dense} channels but this {model} has "
                              f"{unit.channels}; the policy was made for another network")


def kept_channels(record: PolicyRecord, space: SearchSpace) -> dict[str, int]:
    """Channels each unit of ``space`` keeps under the recorded policy (units it leaves out stay dense)."""
    return {u.name: record.channels.get(u.name, {}).get("kept", u.channels) for u in space.units}


def load_state_dict_checked(network: nn.Module, path: str | Path, trust: bool = False) -> None:
    """Load a saved state dict into a rebuilt network, after checking its keys and shapes (``trust``: unpickle
    arbitrary objects, see :func:`~autoprune.zoo.weights.read_state_dict`).

    Raises:
        WeightsError: if the file cannot be read, holds no state dict, or does not fit ``network``.
    """
    path = Path(path)
    state = read_state_dict(path, trust)
    expected = network.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"state dict {str(path)!r} does not fit the rebuilt network: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise WeightsError(f"state dict {str(path)!r} does not fit the network rebuilt from the policy: {key} is "
                               f"{tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the network; "
                               f"was it saved for another policy?")
    network.load_state_dict(state)
