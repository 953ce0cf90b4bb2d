"""Searching on a study that many workers share: every candidate is a trial that one worker claims.

A :class:`StudySearcher` attached to a run whose study other workers share (``shared``; always for Optuna)
evaluates one claimed trial at a time (:func:`~autoprune.trials.study.claim`), races each candidate against the
best one the study holds (whichever worker found it), writes the candidate onto its trial, and counts the
evaluations of the whole study, so ``evals`` is exact whatever the number of workers. An open searcher
(Optuna, random) makes a new trial when none waits (:meth:`StudySearcher.run_open`); a waiting trial (a dead
worker's, enqueued again) is evaluated first, with its parameters. Without a shared study the searcher runs
its own loop in one process, as every searcher does.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.core.evaluator import Candidate, Scoring
from autoprune.core.policy import Policy
from autoprune.search.base import Searcher
from autoprune.trials.record import HITS_ATTR, candidate_attrs, candidate_from_trial, decode_hits, encode_hits
from autoprune.trials.study import (
    ahead_of,
    claim,
    counted,
    drop,
    has_heartbeat,
    objective_values,
    reap_dead_trials,
    unit_distributions,
)


class CandidateFailed(Exception):
    """Raised inside a trial whose candidate failed, so that Optuna records it as FAIL."""


class StudySearcher(Searcher):
    """A searcher whose candidates are the trials of a study that its workers share.

    Attributes:
        study: the study worked on (None: not shared; the searcher runs in one process).
        wait_for_running: when the last evaluations are running in other workers, wait for them (and take over
            any that go stale) instead of stopping; set for storages with a heartbeat.
        poll_s: most seconds between looks at the study while waiting (the first looks come sooner: the wait
            doubles from ``first_poll_s`` each time nothing has changed). A worker waiting for a generation's last
            child sees it finish within ``poll_s``: at 1 s, two workers of evolution idled about 11% of a search.
    """

    parallel = True
    objectives: tuple[str, ...] = ("acc",)
    study: optuna.Study | None = None
    wait_for_running = False
    poll_s = 0.2
    first_poll_s = 0.05
    _pauses = 0

    def attach_run(self, run_dir: Path, study: Any, storage: Any, recorded: Sequence[Candidate] = ()) -> None:
        """With a shared study, work on it (it knows what is done: nothing is replayed) and wait for other
        workers' running trials where the storage has a heartbeat; otherwise replay like any searcher."""
        if not self.shared:
            super().attach_run(run_dir, study, storage, recorded)
            return
        super().attach_run(run_dir, study, storage)
        self.study, self.storage = study, storage
        self.wait_for_running = has_heartbeat(storage)

    @property
    def exhausted(self) -> bool:
        """Whether the evaluations are spent: those of the whole study when it is shared."""
        if self.study is None:
            return super().exhausted
        return sum(counted(t) for t in self.study.get_trials(deepcopy=False)) >= self.evals

    def incumbent(self) -> Candidate | None:
        """The best candidate within the budget that the study holds, found by any worker."""
        if self.study is None:
            return super().incumbent()
        best = None
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = t.user_attrs
            if a.get("status") == "ok" and a.get("within_budget") and (best is None or
                                                                         a["proxy_acc"] > best.user_attrs["proxy_acc"]):
                best = t
        if best is None:
            return None
        candidate = candidate_from_trial(best, best.number)
        # found by another worker: its recorded hits spare racing a second scoring of it (decoded once)
        if HITS_ATTR in best.user_attrs and self.evaluator.full_hits(candidate.kept) is None:
            self.evaluator.adopt_hits(candidate.kept, decode_hits(best.user_attrs[HITS_ATTR], len(self.evaluator.proxy)))
        return candidate

    def run_open(self) -> None:
        """Claim trials until the study holds ``evals`` candidates; a new trial gets :meth:`propose_for`'s policy."""
        if self.storage is not None:
            reap_dead_trials(self.study, self.storage)  # type: ignore[arg-type]
        while not self.exhausted:
            trials = self.study.get_trials(deepcopy=False)  # type: ignore[union-attr]
            in_flight = sum(counted(t) or t.state == TrialState.RUNNING for t in trials)
            if in_flight >= self.evals and not any(t.state == TrialState.WAITING for t in trials):
                if not self.wait_for_running:
                    break
                self.pause()  # other workers hold the last trials; take over any that go stale
                continue
            claim(self.study, self._open_trial, catch=(CandidateFailed,))  # type: ignore[arg-type]

    def _open_trial(self, trial: optuna.Trial) -> float | list[float]:
        trials = self.study.get_trials(deepcopy=False)  # type: ignore[union-attr]
        if ahead_of(trials, trial.number) >= self.evals:  # other workers took the last evaluations first
            trial.set_user_attr("surplus", True)
            drop(trial, "the study already holds its evaluations")
        policy, meta = self.propose_for(trial)
        return self.evaluate_trial(trial, policy, meta)

    def propose_for(self, trial: optuna.Trial) -> tuple[Policy, dict[str, Any]]:
        """The policy (and metadata) of a claimed trial of :meth:`run_open`."""
        raise NotImplementedError(f"{type(self).__name__} must implement propose_for to run open")

    def record_params(self, trial: optuna.Trial, ratios: Mapping[str, float]) -> None:
        """Record ``ratios`` as the trial's parameters (one float per unit, within its bounds)."""
        for name, d in unit_distributions(self.space).items():
            value = min(max(float(ratios.get(name, 0.0)), d.low), d.high)
            trial.storage.set_trial_param(trial._trial_id, name, d.to_internal_repr(value), d)

    def evaluate_trial(self, trial: optuna.Trial, policy: Policy, meta: Mapping[str, Any]) -> float | list[float]:
        """Evaluate ``policy`` as the claimed ``trial`` and write the candidate onto it (:meth:`finish_trial`)."""
        self._pauses = 0
        return self.finish_trial(trial, self.evaluate(policy, {**meta, "optuna_trial": trial.number}))

    def race_trial(self, trial: optuna.Trial, policy: Policy, meta: Mapping[str, Any]) -> Scoring:
        """Score ``policy`` as :meth:`evaluate_trial` does, racing the study's best, but leave it unfinished and
        unrecorded: a speculative candidate, handed to :meth:`finish_trial` (after ``Searcher.record``) once what it
        assumed holds, else dropped with its trial."""
        self._pauses = 0
        _, meta = self.candidate_meta(policy, {**meta, "optuna_trial": trial.number})
        return self.evaluator.race(policy, meta, incumbent=self.rival(meta))

    def finish_trial(self, trial: optuna.Trial, candidate: Candidate) -> float | list[float]:
        """Write a recorded candidate onto its claimed ``trial``; returns its objective values (raises to prune a
        candidate racing stopped, with its stage accuracies, or to fail a failed one)."""
        for key, value in candidate_attrs(candidate).items():
            trial.set_user_attr(key, value)
        hits = self.evaluator.full_hits(candidate.kept) if candidate.ok and self.racing else None
        if hits is not None:
            trial.set_user_attr(HITS_ATTR, encode_hits(hits))
        if len(self.objectives) == 1:  # Optuna keeps intermediate values for one objective only
            for images, accuracy in candidate.curve.items():
                trial.report(accuracy, images)
        if candidate.stopped:  # raced out: TPE ranks it below finished trials, CMA-ES takes its last value
            raise optuna.TrialPruned(f"stopped by racing after {candidate.fidelity} images")
        if not candidate.ok:
            raise CandidateFailed(candidate.reason)
        values = objective_values(candidate, self.objectives)
        return values[0] if len(values) == 1 else values

    def pause(self) -> None:
        """Wait one poll for other workers, settling dead workers' trials: by the storage's heartbeat where it has
        one, else at once for this host's."""
        time.sleep(min(self.poll_s, self.first_poll_s * 2 ** min(self._pauses, 10)))
        self._pauses += 1
        if self.wait_for_running:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)  # type: ignore[arg-type]
        elif self.storage is not None:
            reap_dead_trials(self.study, self.storage)  # type: ignore[arg-type]
