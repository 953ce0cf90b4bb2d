"""Evolutionary search in the spirit of EvoPress (Sieberling et al., 2024): a (1 + lambda) search whose
mutations move channels between units so that the budget stays met, with offspring selected in stages on
growing slices of the proxy split.

The first parent is the best of the starting points, the uniform policy tilted towards the units where the
budget buys the most parameters (:func:`~autoprune.core.projection.tilted_shape`, one per ``tilts`` value).
Each generation mutates the parent (the best policy so far) into ``offspring`` children. A mutation
takes channels from a few units and gives the budget they free to others, then spends whatever budget
is left one allowed step at a time, so every child meets the budget as closely as rounding allows with
no projection step. The children are scored in the Evaluator's racing stages (a quarter, half and all
of the proxy images by default): after each early stage only the best ``survivors`` go on, and with
racing on a child that cannot beat the parent on the same images stops at once. The best child scored
on every image replaces the parent when it is at least as accurate. Every child is one evaluation and
one trial; a child stopped early is recorded ``stopped`` with its accuracy after each stage.

On a study that workers share, each generation is a set of tasks of the study
(:func:`~autoprune.trials.study.enqueue_tasks`): its children are enqueued as waiting trials and evaluated by
whichever worker is free, each racing the best candidate the study holds (the staged survivor cut needs one
process and is left out). The next generation is a deterministic function of the seed and the finished
generations (its parent is their best candidate scored on every image, its mutations draw from the stream
``(seed, generation)``), so any worker builds it, once the last child is recorded: a worker killed while
evaluating or building loses nothing, and two workers building at once enqueue the same children, of which
the first copies are kept. A child's task names its parent. A worker with nothing to claim while a
generation's last children run elsewhere builds the next generation from the best candidate so far and
scores its children speculatively (their trials are marked ``speculative``), each held unrecorded until the
generation before is: kept when its parent is still the best, which is the usual case, else dropped uncounted
and the generation built again from the new parent. The recorded search is the one a single worker makes; the
speculation only fills what would be idle time at each generation's end.
"""

from __future__ import annotations

import functools
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from autoprune.console import status
from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator, Scoring
from autoprune.core.metrics import get_metric
from autoprune.core.moves import move_channels
from autoprune.core.policy import Policy
from autoprune.core.proxy import Proxy
from autoprune.errors import ConfigError
from autoprune.search.base import DEFAULT_TILTS, TILTS_OPTION, SearchOption
from autoprune.search.sensitivity import PRIOR_OPTION, RATIOS_OPTION, check_prior, sensitivity_allocation
from autoprune.search.sensitivity_scan import parse_grid
from autoprune.search.shared import CandidateFailed, StudySearcher
from autoprune.trials.study import TASK_ATTR, claim, done_tasks, drop, enqueue_tasks, held_tasks, waiting_params

DEFAULT_OFFSPRING = 8
DEFAULT_MOVES = 3
SELECTIONS = ("fixed", "fresh")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


class _Recorded:
    """A child answered from a resumed run's record: it reached the stage it reached then."""

    def __init__(self, candidate: Candidate) -> None:
        self.candidate = candidate
        self.kept = candidate.kept

    def reached(self, images: int) -> bool:
        """Whether it was scored on more than ``images`` images (it went on past that stage)."""
        return self.candidate.ok or (self.candidate.fidelity or 0) > images

    def estimate_at(self, images: int) -> float:
        """Its accuracy after the stage of ``images`` images."""
        return self.candidate.curve.get(images, self.candidate.proxy_acc or 0.0)


class EvolutionSearcher(StudySearcher):
    """(1 + lambda) evolution over kept channels, budget kept by construction, offspring selected in stages.

    Args:
        evaluator: the shared Evaluator (its racing stages are the selection stages).
        budget: the resource budget (an exactly priced metric: FLOPs, params, or latency from the lookup table).
        evals: evaluations in total (each child is one).
        seed: seed of the mutations.
        offspring: children per generation (lambda).
        moves: most units that give up channels in one mutation (each gives a sixteenth to three sixteenths of its
            allowed counts, at least one).
        survivors: children kept after each early stage, e.g. ``4,1`` (default: a quarter of the offspring, then
            a quarter of those, at least one).
        selection: ``fixed`` scores every child on the proxy's images (racing the parent there); ``fresh`` selects
            on new images every generation (see :meth:`_run_fresh`).
        tilts: the starting points' tilts (a grid, see :func:`~autoprune.core.projection.tilted_shape`): each
            is the uniform policy tilted towards the units where the budget buys the most parameters (under a
            params budget: the most FLOPs), projected onto the budget; the best of them is the first parent.
            ``0``: the uniform policy alone.
        prior: ``sensitivity`` also scores the sensitivity allocation at the budget as a starting point.
        ratios: the ratio grid of that prior's scan.
    """

    name = "evolution"
    summary = "EvoPress-style (1 + lambda) evolution: channels moved between units, offspring selected in stages"
    options = (
        SearchOption("offspring", f"evolution: children per generation (default {DEFAULT_OFFSPRING})", type=_positive,
                     metavar="N"),
        SearchOption("moves", f"evolution: most units that give up channels in one mutation (default {DEFAULT_MOVES})",
                     type=_positive, metavar="N"),
        SearchOption("survivors", "evolution: children kept after each early racing stage, e.g. 4,1 (default: a "
                     "quarter of the children per stage)", metavar="N,N"),
        SearchOption("selection", "evolution: fixed (children race the parent on the proxy's images; default) or "
                     "fresh (every generation draws new images of the proxy split, EvoPress-style; one process)",
                     choices=SELECTIONS),
        TILTS_OPTION,
        PRIOR_OPTION,
        RATIOS_OPTION,
    )
    exact_cost_only = True
    races = True

    def __init__(
        self,
        evaluator: Evaluator,
        budget: Budget,
        evals: int = 100,
        seed: int = 0,
        *,
        offspring: int = DEFAULT_OFFSPRING,
        moves: int = DEFAULT_MOVES,
        survivors: str | None = None,
        selection: str = "fixed",
        tilts: str = DEFAULT_TILTS,
        prior: str | None = None,
        ratios: str | None = None,
    ) -> None:
        if not get_metric(budget.metric).is_exact(evaluator):
            raise ConfigError(f"--method evolution moves channels under an exactly priced budget; with {budget} add "
                              f"--latency-model lut (the latency lookup table)")
        self.prior_ratios = check_prior(prior, ratios, evaluator, budget)
        super().__init__(evaluator, budget, evals, seed)
        if offspring < 1 or moves < 1:
            raise ConfigError(f"--offspring and --moves must be >= 1, got {offspring} and {moves}")
        if selection not in SELECTIONS:
            raise ConfigError(f"--selection {selection!r}: choose {' or '.join(SELECTIONS)}")
        self.tilts = parse_grid(tilts, "--tilts grid")
        self.offspring = offspring
        self.moves = moves
        self.selection = selection
        racing = evaluator.racing
        self.stages = tuple(racing.stages) if self.racing and racing is not None else (len(evaluator.proxy),)
        self.survivors = self._survivors(survivors)
        self.parent: Candidate | None = None
        self.generation = 0
        self._held: tuple[tuple[int, ...], Scoring] | None = None  # fresh selection: the parent's unrecorded scoring
        self._recorded: dict[tuple[int, ...], deque[Candidate]] = defaultdict(deque)

    def _survivors(self, text: str | None) -> tuple[int, ...]:
        early = len(self.stages) - 1
        if text is None:
            counts, n = [], self.offspring
            for _ in range(early):
                n = max(1, n // 4)
                counts.append(n)
            return tuple(counts)
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            counts = []
        if len(counts) != early or any(c < 1 for c in counts) or counts != sorted(counts, reverse=True):
            raise ConfigError(f"--survivors {text!r}: give {early} falling counts >= 1, one per early racing stage "
                              f"({', '.join(map(str, self.stages[:-1]))} images)" if early else
                              "--survivors needs racing stages (--racing on or image counts)")
        return tuple(counts)

    @functools.cached_property
    def pool(self) -> Proxy:
        """What fresh selection draws from: the proxy's images and the proxy split's other ones (made on first use,
        so that a searcher built only to check settings loads nothing)."""
        held_out = self.evaluator.held_out
        pool = self.evaluator.proxy if held_out is None else self.evaluator.proxy.extended(held_out)
        if len(pool) == len(self.evaluator.proxy):
            status("fresh selection: the proxy scores every image of its split, so each generation's last stage is "
                   "scored on the proxy's own images (leave some unused with fewer --proxy-images)")
        pool.use_reference(self.evaluator.model)
        return pool

    @classmethod
    def check_shared(cls, options: Mapping[str, Any]) -> None:
        """Fresh selection runs in one process: refuse it on a shared study."""
        if options.get("selection") == "fresh":
            raise ConfigError("--selection fresh runs in one process: drop --workers and --storage, or use "
                              "--selection fixed")

    def attach_run(self, run_dir: Path, study: Any, storage: Any, recorded: Sequence[Candidate] = ()) -> None:
        """A resumed run in one process replays its generations: a child the record holds is answered from it. (On
        a shared study the generations are its tasks.)"""
        super().attach_run(run_dir, study, storage, recorded)
        self._replay.clear()
        for candidate in recorded if self.study is None else ():
            self._recorded[self.evaluator.key(candidate.kept)].append(candidate)

    def _run(self) -> None:
        if self.study is not None:
            self._run_shared()
            return
        if self.selection == "fresh":
            self._run_fresh()
            return
        for policy in self.starts:
            if self.exhausted:
                return
            self._consider(self._full(policy, {"start": True}))
        while not self.exhausted and self.parent is not None:
            self.generation += 1
            self._generation()

    @functools.cached_property
    def starts(self) -> list[Policy]:
        """The starting points, each once: the tilted uniform policies at the budget (tilt 0 first), and the
        sensitivity allocation with the prior."""
        prior = [] if self.prior_ratios is None else [sensitivity_allocation(self, self.prior_ratios)[0]]
        return self.tilted_starts(self.tilts, prior)

    def _consider(self, candidate: Candidate) -> None:
        if candidate.ok and (self.parent is None or candidate.proxy_acc >= self.parent.proxy_acc):  # type: ignore[operator]
            self.parent = candidate

    def _full(self, policy: Any, meta: dict[str, Any]) -> Candidate:
        """A starting point (or fresh selection's final parent), scored on every image."""
        kept = self.space.kept(policy)
        if self._recorded.get(self.evaluator.key(kept)):
            return self.record(self._recorded[self.evaluator.key(kept)].popleft())
        meta = {"method": self.name, **meta, "within_budget": self.cost(kept) <= self.limit}
        return self.record(self.evaluator.evaluate(policy, meta))

    def _generation(self) -> None:
        assert self.parent is not None
        count = min(self.offspring, self.evals - self.result.evaluations)
        children: list[Scoring | _Recorded] = []
        for _ in range(count):
            kept = self._mutate(self.parent.kept)
            recorded = self._recorded.get(self.evaluator.key(kept))
            if recorded:
                children.append(_Recorded(recorded.popleft()))
                continue
            meta = {"method": self.name, "generation": self.generation, "within_budget": self.cost(kept) <= self.limit}
            children.append(self.evaluator.start(self.space.policy_from_kept(kept), meta))
        against = self.evaluator.hits(self.parent) if self.racing else None
        racing = self.evaluator.racing
        alive = children
        for images, keep in zip(self.stages[:-1], self.survivors):
            for child in alive:
                if isinstance(child, Scoring):
                    child.advance(images)
            going = []
            for child in alive:
                if isinstance(child, _Recorded):
                    lost = not child.reached(images)
                else:
                    lost = child.failed or (against is not None and racing is not None and child.loses_to(against, racing))
                if lost:
                    self._finish(child)
                else:
                    going.append(child)
            going.sort(key=lambda c: -(c.estimate_at(images) if isinstance(c, _Recorded) else c.estimate or 0.0))
            for child in going[keep:]:
                self._finish(child)
            alive = going[:keep]
        for child in alive:
            if isinstance(child, Scoring):
                child.advance()
            self._consider(self._finish(child))

    def _run_fresh(self) -> None:
        """EvoPress's selection: every generation draws new images of the proxy split (the proxy's and the others),
        as many as the proxy scores, in a random order from the stream ``(seed, generation, 1)`` (its mutations draw
        from ``(seed, generation)``); each racing stage scores the first of them (a stage of 500 images: the first
        500). All children are scored on the first stage, the best ``survivors`` go on to the next, scoring only the
        images it adds while they keep the racing's early BatchNorm recalibration, and on the last stage (every
        calibration batch, all the drawn images) the parent is scored again beside the survivors and the best of
        them becomes the parent only if it beats the parent there. A parent never keeps a lucky score, so the search
        does not climb the noise of one fixed image set.

        Each child is recorded ``stopped`` (its accuracy after each stage in ``meta["selection"]``, images: accuracy);
        its proxy score is not made. The last evaluation scores the final parent on the proxy's images: the search's
        one fully scored candidate and its result. The starting points compete as the first generation's children
        (with fewer evaluations than starting points, the uniform policy is scored alone).
        """
        starts = [self.space.kept(p) for p in self.starts]
        parent = starts[0]
        if self.evals > len(starts):
            parent = self._select_fresh(starts, None) or parent
        while self.evals - self.result.evaluations > 1:
            count = min(self.offspring, self.evals - 1 - self.result.evaluations)
            self.rng = np.random.default_rng((self.seed, self.generation + 1))
            parent = self._select_fresh([self._mutate(parent) for _ in range(count)], parent) or parent
        meta = {"method": self.name, "generation": self.generation, "final": True}
        self._full(self.space.policy_from_kept(parent), meta)

    def _select_fresh(self, children: list[dict[str, int]], parent: Mapping[str, int] | None) -> dict[str, int] | None:
        """One generation of fresh selection (see :meth:`_run_fresh`): score ``children`` in stages on this
        generation's images and record them; returns the child that beats ``parent`` on the last stage, if one does."""
        self.generation += 1
        draw = np.random.default_rng((self.seed, self.generation, 1))
        drawn = self.pool.subset(torch.from_numpy(draw.permutation(len(self.pool))[:self.stages[-1]]))
        scores: list[dict[str, float]] = []
        scorings: list[Scoring | Candidate] = []
        for kept in children:
            recorded = self._recorded.get(self.evaluator.key(kept))
            if recorded:  # a resumed run's child: its scores are in the record
                scorings.append(recorded.popleft())
                scores.append({k: float(v) for k, v in scorings[-1].meta.get("selection", {}).items()})
                continue
            meta = {"method": self.name, "generation": self.generation, "within_budget": self.cost(kept) <= self.limit}
            scorings.append(self.evaluator.start(self.space.policy_from_kept(kept), meta))
            scores.append({})
        hits: list[torch.Tensor] = [torch.zeros(0, dtype=torch.bool) for _ in children]
        alive = list(range(len(children)))
        for stage, images in enumerate(self.stages):
            key = str(images)
            for i in alive:
                scoring = scorings[i]
                if isinstance(scoring, Scoring) and (more := scoring.hits_on(drawn, images, hits[i])) is not None:
                    hits[i] = more
                    scores[i][key] = more.float().mean().item()
            alive = sorted((i for i in alive if key in scores[i]), key=lambda i: -scores[i][key])
            alive = alive[:self.survivors[stage]] if stage < len(self.survivors) else alive
        for scoring, score in zip(scorings, scores):
            if isinstance(scoring, Scoring):
                scoring.meta["selection"] = score
                scoring = scoring.finish()
            self.record(scoring)
        if not alive:
            return None
        best = alive[0]
        if parent is not None:
            again = self._parent_scoring(parent).hits_on(drawn)
            if again is not None and again.float().mean().item() >= scores[best][str(self.stages[-1])]:
                return None
        return children[best]

    def _parent_scoring(self, parent: Mapping[str, int]) -> Scoring:
        """The parent's network, pruned and recalibrated once while it stays the parent (never recorded again)."""
        key = self.evaluator.key(parent)
        if self._held is None or self._held[0] != key:
            self._held = (key, self.evaluator.start(self.space.policy_from_kept(parent)))
        return self._held[1]

    def _finish(self, child: Scoring | _Recorded) -> Candidate:
        return self.record(child.candidate if isinstance(child, _Recorded) else child.finish())

    def _mutate(self, parent: Mapping[str, int]) -> dict[str, int]:
        """A child of ``parent`` (:func:`~autoprune.core.moves.move_channels`): it meets the budget and differs from
        the parent (when the space allows)."""
        return move_channels(parent, self.space, self.cost, self.limit, self.rng, self.moves)

    def _run_shared(self) -> None:
        """Evaluate the waiting children of the study, building each generation once the one before is recorded
        (again, where a builder died halfway), until ``evals`` children are recorded. A worker that finds nothing
        to claim while the last children of a generation run elsewhere builds the next one speculatively, from
        the best candidate so far, instead of idling."""
        assert self.study is not None
        while True:
            trials = self.study.get_trials(deepcopy=False)
            if any(t.state == TrialState.WAITING for t in trials):
                claim(self.study, self._child, catch=(CandidateFailed,), tasks_only=True)
                continue
            generation, parent = self._current(trials)
            if not self._size(generation) or (generation and parent is None):
                return  # every generation is recorded, or nothing scored on every image is left to mutate
            held = held_tasks(trials)  # (a speculative child dropped while its parent held is enqueued again)
            if not self._tasks(generation, parent) <= held:
                self._build(generation, parent)
                continue
            ahead = self._parent(generation + 1, trials)  # the next parent, if the running children do not beat it
            if self._size(generation + 1) and ahead is not None and not self._tasks(generation + 1, ahead) <= held:
                self._build(generation + 1, ahead)
                continue
            self.pause()  # its last children run in other workers (or died there: settled here)

    def _size(self, generation: int) -> int:
        """Children of a generation (generation 0: the starting points), so that all of them make ``evals``."""
        first = min(len(self.starts), self.evals)
        if generation == 0:
            return first
        return max(0, min(self.offspring, self.evals - first - (generation - 1) * self.offspring))

    def _current(self, trials: Sequence[FrozenTrial]) -> tuple[int, FrozenTrial | None]:
        """The first generation whose children (those of its true parent) are not all recorded, and that parent."""
        done = done_tasks(trials)
        generation = 0
        while True:
            parent = self._parent(generation, trials)
            if not self._size(generation) or (generation and parent is None) or not self._tasks(generation, parent) <= done:
                return generation, parent
            generation += 1

    @staticmethod
    def _parent(generation: int, trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
        """The parent of ``generation``: the best child of the earlier generations scored on every image (ties: the
        latest), or None (generation 0, or none was)."""
        scored = [t for t in trials if t.state == TrialState.COMPLETE and "generation" in t.user_attrs
                  and int(t.user_attrs["generation"]) < generation]
        if not generation or not scored:
            return None
        return max(scored, key=lambda t: (t.user_attrs["proxy_acc"], t.user_attrs["generation"], t.user_attrs["slot"]))

    def _tasks(self, generation: int, parent: FrozenTrial | None) -> set[str]:
        return {_task(generation, slot, parent) for slot in range(self._size(generation))}

    def _build(self, generation: int, parent: FrozenTrial | None) -> None:
        """Enqueue the children of ``generation`` by ``parent`` that no trial holds yet: the starting points, or
        mutations of the parent drawn from the stream ``(seed, generation)``."""
        if parent is None:
            children = [self.space.kept(p) for p in self.starts]
        else:
            self.rng = np.random.default_rng((self.seed, generation))
            kept = {n: int(k) for n, k in parent.user_attrs["kept"].items()}
            children = [self._mutate(kept) for _ in range(self._size(generation))]
        tag = _tag(parent)
        enqueue_tasks(self.study, {_task(generation, i, parent): (dict(self.space.policy_from_kept(kept)),  # type: ignore[arg-type]
                                                                  {"generation": generation, "slot": i, "parent": tag})
                                   for i, kept in enumerate(children)})

    def _child(self, trial: optuna.Trial) -> float:
        """Evaluate a claimed child, racing the best candidate of the study. A child built speculatively (its
        generation's parent is not settled yet) is scored, then held unrecorded until the generation before it is
        recorded: kept if its parent is still the best, else dropped uncounted, like one claimed after that."""
        assert self.study is not None
        enqueued = waiting_params(trial)
        if enqueued is None:  # (claimed with tasks_only: every trial here was enqueued with its child)
            drop(trial, "no child was waiting (another worker took it)")
        policy = Policy(enqueued)  # type: ignore[arg-type]
        self.record_params(trial, policy)
        generation = int(trial.user_attrs["generation"])
        meta = {"generation": generation} if generation else {"start": True}
        trials = self.study.get_trials(deepcopy=False)
        if generation <= self._current(trials)[0]:
            self._check_parent(trial, generation, trials)
            return self.evaluate_trial(trial, policy, meta)  # type: ignore[return-value]
        scoring = self.race_trial(trial, policy, meta)
        try:
            with scoring.paused():
                trials = self._await_generation(trial, generation - 1)
            self._check_parent(trial, generation, trials)
        finally:  # kept or dropped (a scoring spent in vain); a worker killed meanwhile leaves no mark on its retry
            trial.set_user_attr("speculative", True)
        return self.finish_trial(trial, self.record(scoring.finish()))  # type: ignore[return-value]

    def _await_generation(self, trial: optuna.Trial, generation: int) -> Sequence[FrozenTrial]:
        """Wait until ``generation`` is recorded (returns the study's trials then); give up (dropping ``trial``) when
        one of its children waits to be claimed again (its worker died): this worker may be the only one left to
        evaluate it."""
        while True:
            trials = self.study.get_trials(deepcopy=False)  # type: ignore[union-attr]
            current, parent = self._current(trials)
            if current > generation:
                return trials
            waiting = {t.user_attrs.get(TASK_ATTR) for t in trials if t.state == TrialState.WAITING}
            if waiting & self._tasks(current, parent):
                drop(trial, "a child of the generation before waits to be evaluated again")
            self.pause()

    def _check_parent(self, trial: optuna.Trial, generation: int, trials: Sequence[FrozenTrial]) -> None:
        """Drop ``trial`` (uncounted) when its parent is not its generation's parent in ``trials``: built
        speculatively from a candidate that a later child of the generation before beat."""
        parent = self._parent(generation, trials)
        if trial.user_attrs.get("parent") != _tag(parent):
            drop(trial, f"its parent ({trial.user_attrs.get('parent')}) was replaced by {_tag(parent)}")


def _task(generation: int, slot: int, parent: FrozenTrial | None) -> str:
    return f"generation {generation} child {slot}" + (f" of {_tag(parent)}" if parent is not None else "")


def _tag(parent: FrozenTrial | None) -> str | None:
    """A parent's name in its children's tasks: its own generation and slot (the same in every run of a seed)."""
    return None if parent is None else f"generation {parent.user_attrs['generation']} child {parent.user_attrs['slot']}"
