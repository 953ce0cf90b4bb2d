"""The run's record: every candidate is a trial of the run's Optuna study, the one source of truth.

Writing: :class:`StudyRecorder`, an Evaluator observer, adds each candidate as a finished trial (an
Optuna searcher's candidates are its own trials, given the same attributes with
:func:`candidate_attrs`); :class:`TrialRecorder` appends the same candidate to ``trials.csv`` as a
live export (workers share the file under a lock). Reading: :func:`recorded_candidates` gives them back as candidates (a
resumed search replays them), :func:`trials_frame` as the ``trials.csv`` table that picking the
best policy reads. :func:`export_trials` writes ``trials.csv`` from the study; the file is an export
for people and other tools, never read back: a resumed run rewrites it from the study before appending,
so a damaged or stale copy is replaced.
"""

from __future__ import annotations

import base64
import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

from autoprune.core.evaluator import Candidate
from autoprune.core.policy import Policy
from autoprune.core.space import SearchSpace
from autoprune.errors import ConfigError
from autoprune.io import atomic_write_text
from autoprune.trials.study import counted, objective_values, unit_distributions

TRIALS_FILE = "trials.csv"
HITS_ATTR = "hits"
"""Trial attribute with a candidate's per-image hits on every proxy image (:func:`encode_hits`): the workers of a
shared study race their candidates against an incumbent another worker found without scoring it again."""
TIMINGS = ("prune", "recover", "recalibrate", "score", "cost", "latency", "total")
_DICT_META = ("sample", "selection")  # meta keys whose dict values are trial attributes of their own
_OWN_META = ("method", "within_budget", *_DICT_META)  # meta keys with attributes of their own


def candidate_attrs(candidate: Candidate) -> dict[str, Any]:
    """The trial user attributes of a candidate: everything its ``trials.csv`` row holds."""
    attrs: dict[str, Any] = {
        "method": candidate.meta.get("method", ""),
        "status": candidate.status,
        "within_budget": bool(candidate.meta.get("within_budget", False)),
        "proxy_acc": candidate.proxy_acc,
        "flops": candidate.flops,
        "params": candidate.params,
        "latency_ms": candidate.latency_ms,
        **candidate.costs,  # registered metrics beyond FLOPs, params and latency, under their columns
        "ratios": dict(candidate.policy),
        "kept": dict(candidate.kept),
        "evaluation": candidate.index,
        "cached": candidate.cached,
        "timings": {k: v for k, v in candidate.timings.items() if _finite(v)},
        "fidelity": candidate.fidelity,
        "curve": {str(n): v for n, v in candidate.curve.items()},
        "meta": {k: v for k, v in candidate.meta.items()
                 if k not in _OWN_META and isinstance(v, (int, float, str, bool)) and _finite(v)},
    }
    if candidate.costs:
        attrs["costs"] = sorted(candidate.costs)
    if candidate.reason:
        attrs["reason"] = candidate.reason
    for key in _DICT_META:
        if key in candidate.meta:
            attrs[key] = dict(candidate.meta[key])
    return attrs


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


class StudyRecorder:
    """An Evaluator observer adding every candidate as a finished trial of the run's study: complete, pruned (a
    candidate racing stopped, with the accuracy after each stage as intermediate values) or failed.

    Candidates that an Optuna trial already owns (``meta["optuna_trial"]``) are left to that trial.
    """

    def __init__(self, study: optuna.Study, space: SearchSpace, objectives: Sequence[str] = ("acc",)) -> None:
        self.study = study
        self.objectives = tuple(objectives)
        self.distributions = unit_distributions(space)

    def __call__(self, candidate: Candidate) -> None:
        if "optuna_trial" in candidate.meta:
            return
        params = {n: min(max(candidate.policy.get(n, 0.0), d.low), d.high) for n, d in self.distributions.items()}
        state = TrialState.COMPLETE if candidate.ok else TrialState.PRUNED if candidate.stopped else TrialState.FAIL
        self.study.add_trial(optuna.trial.create_trial(
            state=state, values=objective_values(candidate, self.objectives) if candidate.ok else None,
            params=params, distributions=dict(self.distributions), user_attrs=candidate_attrs(candidate),
            intermediate_values=dict(candidate.curve) if len(self.objectives) == 1 else None,
        ))


def recorded_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's candidate trials (finished, or failed by their evaluation), in the order they finished."""
    trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
    return sorted(trials, key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number))


def encode_hits(hits: torch.Tensor) -> str:
    """Per-image hits (booleans) as text for a trial attribute: base64 of the packed bits (1,000 images: 168
    characters)."""
    return base64.b64encode(np.packbits(hits.numpy().astype(bool)).tobytes()).decode("ascii")


def decode_hits(text: str, images: int) -> torch.Tensor:
    """The first ``images`` per-image hits :func:`encode_hits` wrote."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:images]
    return torch.from_numpy(bits.astype(bool))


def candidate_from_trial(trial: FrozenTrial, position: int) -> Candidate:
    """The candidate a recorded trial holds (``position``: its place in the record).

    Raises:
        ConfigError: if the trial lacks a candidate's attributes.
    """
    a = trial.user_attrs
    try:
        meta = {**a.get("meta", {}), "method": a["method"], "within_budget": a["within_budget"]}
        meta.update({key: a[key] for key in _DICT_META if key in a})
        return Candidate(
            index=int(a.get("evaluation", position)), policy=Policy(a["ratios"]),
            kept={k: int(v) for k, v in a["kept"].items()}, status=a["status"], proxy_acc=a["proxy_acc"],
            flops=int(a["flops"]), params=int(a["params"]), latency_ms=a.get("latency_ms"), reason=a.get("reason"),
            timings=dict(a.get("timings", {})), cached=bool(a.get("cached", False)), meta=meta,
            costs={c: a[c] for c in a.get("costs", ())}, fidelity=a.get("fidelity"),
            curve={int(n): float(v) for n, v in a.get("curve", {}).items()},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"trial {trial.number} of the run's study is not an autoprune candidate ({type(e).__name__}: "
                          f"{e}); was the study written by another program? Choose another --study-name") from None


def recorded_candidates(study: optuna.Study) -> list[Candidate]:
    """Every recorded candidate, in the order of the record."""
    return [candidate_from_trial(t, i) for i, t in enumerate(recorded_trials(study))]


def candidate_row(candidate: Candidate, unit_names: Sequence[str]) -> dict[str, Any]:
    """One ``trials.csv`` row: metrics, status, timings, then per-unit ratios and kept channels."""
    meta = dict(candidate.meta)
    sample = meta.pop("sample", {}) or {}
    row: dict[str, Any] = {
        "trial": candidate.index,
        "method": meta.pop("method", ""),
        "status": candidate.status,
        "within_budget": meta.pop("within_budget", None),
        "proxy_acc": candidate.proxy_acc,
        "flops": candidate.flops,
        "params": candidate.params,
        "latency_ms": candidate.latency_ms,
        **candidate.costs,  # registered metrics beyond FLOPs, params and latency, under their columns
        "cached": candidate.cached,
        "reason": candidate.reason or "",
        "fidelity": candidate.fidelity,
    }
    row.update({f"time_{k}": candidate.timings.get(k) for k in TIMINGS})
    row.update({f"ratio:{n}": candidate.policy.get(n, 0.0) for n in unit_names})
    row.update({f"kept:{n}": candidate.kept[n] for n in unit_names})
    row.update({f"sample:{n}": sample[n] for n in unit_names if n in sample})
    row.update({k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))})
    return row


class TrialRecorder:
    """An Evaluator observer that appends every candidate to ``trials.csv`` as it is evaluated.

    Appends are serialised by a file lock, so several worker processes can share one file, and a
    resumed run appends to the rows it already has (under the header it already has). The ``trial``
    column numbers the rows of the file.
    """

    def __init__(self, path: Path, unit_names: Sequence[str]) -> None:
        self.path = path
        self.unit_names = list(unit_names)
        self._columns: list[str] | None = None  # the file's header, once read
        self._rows = 0  # rows counted up to byte offset _counted (only what others appended since is read again)
        self._counted = 0

    def __call__(self, candidate: Candidate) -> None:
        row = candidate_row(candidate, self.unit_names)
        with open(self.path, "a+", newline="") as f:
            _lock(f)
            if self._columns is None:
                f.seek(0)
                first = f.readline()
                self._columns = next(csv.reader([first])) if first else None
                self._counted = f.tell()
            f.seek(self._counted)
            row["trial"] = self._rows = self._rows + sum(1 for _ in csv.reader(f))  # over every worker and resumed run
            header = self._columns is None
            self._columns = self._columns or list(row)
            pd.DataFrame([row]).reindex(columns=self._columns).to_csv(f, header=header, index=False)
            self._rows += 1
            self._counted = f.tell()


def _lock(f: Any) -> None:
    """Hold an exclusive lock on an open file until it is closed (POSIX; elsewhere one writer is assumed)."""
    try:
        import fcntl
    except ImportError:  # Windows: workers there would need a storage-side record only
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def trials_frame(study: optuna.Study, unit_names: Sequence[str]) -> pd.DataFrame:
    """The ``trials.csv`` table of the study's candidates (``trial`` numbers the rows in record order).

    Raises:
        ConfigError: if the study holds no candidates.
    """
    rows = [candidate_row(c, unit_names) for c in recorded_candidates(study)]
    if not rows:
        raise ConfigError(f"study {study.study_name!r} holds no candidates yet")
    for position, row in enumerate(rows):
        row["trial"] = position
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return pd.DataFrame(rows).reindex(columns=columns)


def exported_rows(run_dir: Path) -> int:
    """How many candidates the run's ``trials.csv`` lists (0 when it is missing or unreadable)."""
    try:
        with open(run_dir / TRIALS_FILE, newline="") as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
    except (OSError, UnicodeDecodeError, csv.Error):
        return 0


def export_trials(study: optuna.Study, unit_names: Sequence[str], run_dir: Path) -> pd.DataFrame:
    """Write ``trials.csv`` from the study (replacing any older copy whole) and return the table."""
    frame = trials_frame(study, unit_names)
    atomic_write_text(run_dir / TRIALS_FILE, frame.to_csv(index=False))
    return frame
