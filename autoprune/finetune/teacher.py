"""The distillation teacher, its logits optionally kept on disk per (seed, epoch) so that students trained alike pay
for them once.

A fine-tuning epoch's batches and augmentation depend on the seed, the epoch, the training images, the batch size and
the augmentation (:class:`~autoprune.finetune.trainer.Finetuner`), never on the student. Every student trained with the
same ones (the fine-tuning study trains seven per seed) feeds the dense teacher the same inputs, so the teacher's
logits of an epoch are computed by the first student that trains it and read back by the others, as FKD (Shen and
Xing, 2021) stores the soft labels of its crops. Each batch's inputs leave a fingerprint (their sum and sum of
squares) next to its logits, checked before the logits are used: a batch that does not match is computed again, so a
stale file costs time, never correctness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.io import atomic_write

LOGITS_FORMAT = "autoprune-teacher-logits-v1"


def fingerprint(x: torch.Tensor) -> torch.Tensor:
    """Sum and sum of squares of a batch (float64, on the CPU): equal for equal inputs."""
    x = x.detach().double()
    return torch.stack([x.sum(), (x * x).sum()]).cpu()


def teacher_key(teacher: nn.Module, setup: Mapping[str, Any]) -> str:
    """A short hash of the teacher's weights and of what decides an epoch's inputs (``setup``: JSON-able)."""
    digest = hashlib.sha256(json.dumps(dict(setup), sort_keys=True).encode())
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(fingerprint(tensor.float()).numpy().tobytes())
    return digest.hexdigest()[:16]


class Teacher:
    """The dense network's logits for each training batch, in the order the batches come.

    Args:
        network: the teacher (eval mode, never trained).
        folder: where the logits of each epoch are kept (``<key>-s<seed>-e<epoch>.pt``); None: always computed.
        key: names the teacher and the training setup (:func:`teacher_key`).
    """

    def __init__(self, network: nn.Module, folder: Path | None = None, key: str = "") -> None:
        self.network = network.eval()
        self.folder = folder
        self.key = key
        self.read = 0
        self.computed = 0
        self._stored: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self._new: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._path: Path | None = None
        self._epoch_computed = 0

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Load the kept logits of ``epoch`` for ``seed``, if any."""
        self._new = ([], [])
        self._stored = None
        self._epoch_computed = 0
        self._path = None
        if self.folder is None:
            return
        self._path = self.folder / f"{self.key}-s{seed}-e{epoch}.pt"
        try:
            saved = torch.load(self._path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):
            return  # none kept yet, or unreadable: computed and written again
        if isinstance(saved, dict) and saved.get("format") == LOGITS_FORMAT and saved.get("key") == self.key:
            self._stored = (saved["fingerprints"], list(saved["logits"].split(saved["sizes"].tolist())))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the epoch's next batch ``x``: kept ones when their fingerprint matches."""
        if self.folder is None:
            self.computed += 1
            return self.network(x)
        index = len(self._new[0])
        mark = fingerprint(x)
        logits = None
        if self._stored is not None and index < len(self._stored[1]) and torch.equal(self._stored[0][index], mark) \
                and len(self._stored[1][index]) == len(x):
            logits = self._stored[1][index].to(x.device)
            self.read += 1
        if logits is None:
            logits = self.network(x)
            self.computed += 1
            self._epoch_computed += 1
        self._new[0].append(mark)
        self._new[1].append(logits.detach().cpu())
        return logits

    def end_epoch(self) -> None:
        """Keep the epoch's logits when any of them was computed (not all read back)."""
        marks, logits = self._new
        if self._path is None or self._epoch_computed == 0:
            return
        state = {"format": LOGITS_FORMAT, "key": self.key, "fingerprints": torch.stack(marks),
                 "sizes": torch.tensor([len(t) for t in logits]), "logits": torch.cat(logits)}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path, lambda tmp: torch.save(state, tmp))
