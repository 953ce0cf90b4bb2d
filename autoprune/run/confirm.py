"""The final choice of a search: its best candidates scored again on proxy-split images the search never saw.

A search keeps the candidate with the best proxy accuracy, but after hundreds of candidates scored on the same
proxy images the best score is partly luck (a winner's curse), and the harder a method optimises, the more of
that luck it finds: on ResNet-20 at 0.3flops SAC's best reached 32.4% on the proxy and 29.3% on the report split,
while random search's best read 31.4% and 30.4%. Scoring the top few candidates again on fresh images of the
same split and keeping the best there removes that bias for the price of a few evaluations;
``results/benchmarks/resnet20-cifar10-e300-confirm.md`` measures what it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from autoprune.console import plural, status
from autoprune.experiment import Experiment

DEFAULT_CANDIDATES = 10
"""Top candidates (distinct layouts, best proxy accuracy first) scored again for the final choice."""
DEFAULT_IMAGES = 4000
"""Most unseen proxy-split images they are scored on (the CIFAR-10 presets leave 4,000 beside the proxy's 1,000)."""


T = TypeVar("T")


def best_first(scored: Iterable[T], accuracy: Callable[[T], float], layout: Callable[[T], Mapping[str, int]]) -> list[T]:
    """One entry per layout (kept channels), best proxy accuracy first; ties and repeats keep the earliest, as a
    search's own best does. The ranking the final choice takes its candidates from."""
    seen: set[tuple[tuple[str, int], ...]] = set()
    ranked = []
    for item in sorted(scored, key=lambda item: -accuracy(item)):  # (sorted is stable)
        key = tuple(sorted((name, int(k)) for name, k in layout(item).items()))
        if key not in seen:
            seen.add(key)
            ranked.append(item)
    return ranked


@dataclass(frozen=True)
class Confirmation:
    """The top candidates' accuracies on the unseen images, in the order given (best proxy accuracy first)."""

    accuracies: tuple[float, ...]
    images: int

    @property
    def chosen(self) -> int:
        """Index of the candidate kept: the most accurate on the unseen images (ties: the better proxy rank)."""
        return max(range(len(self.accuracies)), key=lambda i: (self.accuracies[i], -i))

    def record(self) -> dict[str, Any]:
        """What ``policy.json`` and a benchmark cell keep of it."""
        return {"candidates": len(self.accuracies), "images": self.images, "proxy_rank": self.chosen + 1,
                "accuracy": self.accuracies[self.chosen], "accuracies": list(self.accuracies)}


def confirm(exp: Experiment, ranked: Sequence[Mapping[str, int]], candidates: int = DEFAULT_CANDIDATES,
            images: int = DEFAULT_IMAGES) -> Confirmation | None:
    """Score the first ``candidates`` layouts of ``ranked`` (distinct kept channels, best proxy accuracy first) on
    up to ``images`` unseen proxy-split images, each pruned, recalibrated and scored as the proxy scores (accuracy, or
    agreement with the dense network for a label-free proxy).

    Returns None (the final choice stays the best proxy accuracy) when ``candidates`` or ``images`` is 0, when fewer
    than two layouts are ranked, or when the proxy uses its whole split (no image is unseen).
    """
    top = list(ranked[:candidates])
    unseen = exp.unseen
    if candidates < 1 or images < 1 or len(top) < 2:
        return None
    if unseen is None or not len(unseen):
        status("final choice: by proxy accuracy (the proxy uses every image of its split, none is left to confirm "
               "the best candidates on; lower the proxy's images to leave some)")
        return None
    unseen = unseen.subset(torch.arange(min(images, len(unseen))))
    status(f"final choice: the best {plural(len(top), 'candidate')} scored again on {len(unseen)} unseen proxy-split "
           f"images")
    proxy = exp.evaluator.proxy.on(unseen)  # scored as the proxy scores: its kind, batches and forward path
    proxy.use_reference(exp.model)  # as the Evaluator gives it the dense network
    recalibrate = exp.evaluator.recovery is None
    accuracies = tuple(proxy.score(exp.evaluator.build(exp.space.policy_from_kept(kept)), recalibrate).accuracy
                       for kept in top)
    return Confirmation(accuracies, len(unseen))
