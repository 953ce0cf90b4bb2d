"""NetAdapt (Yang et al. 2018): shrink the network step by step, one unit per step, until the budget is met.

Each iteration lowers the resource target by a step that decays geometrically (``step`` times the
dense cost, times ``decay`` per iteration). For every unit it finds the smallest cut of that unit
alone that reaches the target (the most channels whose exact cost fits: a bisection over the unit's
allowed counts) and evaluates it, optionally after a short fine-tune; the best candidate (highest
proxy accuracy, or smallest accuracy drop per unit of resource saved) becomes the network of the
next iteration. A unit that cannot reach the target alone is skipped, as in the paper; and since a
deep network of many small units (a CIFAR ResNet-56 unit holds about 3% of the FLOPs) may have no
unit that reaches a large step, the step is capped at the reduction half of the units can still
reach alone.

Latency is predicted by the Evaluator's cost (the lookup table with ``--latency-model lut``) to choose
the cuts, but the search stops only when the network it keeps meets the budget both as predicted and
as the Evaluator *measures* it: when the table is optimistic, the target is corrected by the
measured-to-predicted ratio and the search goes on, so the returned policy meets the budget as measured.

NetAdapt is deterministic (the seed is unused). ``evals`` caps the evaluations: when the next
iteration would not fit, the evaluations left go to the current network and then to the last
iteration's runners-up, each projected onto the budget (:func:`~autoprune.core.projection.project`), so
a policy within the budget is always returned. When the
budget is met with FLOPs or params left, a final candidate hands them out one rounding step at a time
(:func:`~autoprune.core.projection.fill_budget`). Intermediate candidates are above the budget by design. The
history (``iteration, unit, kept, resource, accuracy, chosen, ...``) is kept in :attr:`history` and
written to ``netadapt.csv`` in the run directory after every iteration.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import pandas as pd

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.policy import Policy
from autoprune.core.projection import fill_budget
from autoprune.errors import ConfigError
from autoprune.finetune.short import ShortFinetune
from autoprune.search.base import Searcher, SearchOption

SELECTIONS = ("acc", "drop-per-cost")


class NetAdaptSearcher(Searcher):
    """NetAdapt's greedy, iterative per-unit shrinking under a decaying resource-reduction schedule.

    Args:
        evaluator: the shared Evaluator (with ``short_ft_steps``, one that has scored nothing yet).
        budget: the budget.
        evals: most evaluations (about units x iterations are needed).
        seed: unused (NetAdapt is deterministic); kept for the common interface.
        step: first iteration's reduction, as a fraction of the dense cost, in (0, 1).
        decay: factor of the reduction per iteration, in (0, 1].
        select: ``acc`` (NetAdapt's choice: highest proxy accuracy) or ``drop-per-cost`` (smallest
            accuracy drop per unit of resource saved; one more evaluation, of the dense network).
        short_ft_steps: steps of the short fine-tune before each candidate is scored (0: none).
        short_ft_lr: its learning rate.
        run_dir: where ``netadapt.csv`` is written.

    Raises:
        ConfigError: for an option out of range, or a short fine-tune on an Evaluator that already
            recovers networks otherwise (the short fine-tune runs on the Evaluator's copy, never changing it).
        BudgetError: if the budget cannot be met in the search space.
    """

    name = "netadapt"
    summary = "greedy, step by step (NetAdapt)"
    deterministic = True
    latency_model = "lut"
    options = (
        SearchOption("step", "first iteration's cut, a fraction of the dense cost (default 0.025)", float,
                     metavar="F", flag="--netadapt-step"),
        SearchOption("decay", "factor of the cut per iteration (default 0.98)", float, metavar="D",
                     flag="--netadapt-decay"),
        SearchOption("select", "keep the candidate with the best accuracy (acc, default) or the smallest accuracy "
                     "drop per resource saved", choices=SELECTIONS, flag="--netadapt-select"),
        SearchOption("short_ft_steps", "distillation SGD steps before scoring each candidate (default 0)", int,
                     metavar="K"),
    )

    @classmethod
    def benchmark_options(cls, budget: Budget, evals: int, units: int | None) -> dict[str, Any]:
        """The first step sized so that the iterations (one evaluation per unit each) fit ``evals``.

        A relative budget needs a reduction of ``1 - value`` of the dense cost; spread over
        ``evals / units`` iterations (at least the default 0.025, at most 0.5). Nothing before the
        space's size is known.
        """
        if units is None:
            return {}
        reduction = 1.0 - budget.value if budget.relative else 0.5
        iterations = max(1, evals // max(1, units) - 1)
        return {"step": min(0.5, max(0.025, reduction / iterations))}

    def __init__(self, evaluator: Evaluator, budget: Budget, evals: int = 100, seed: int = 0, *,
                 step: float = 0.025, decay: float = 0.98, select: str = "acc", short_ft_steps: int = 0,
                 short_ft_lr: float = 0.01, run_dir: str | Path | None = None) -> None:
        if not 0.0 < step < 1.0:
            raise ConfigError(f"--netadapt-step must be in (0, 1) (a fraction of the dense cost), got {step}")
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"--netadapt-decay must be in (0, 1], got {decay}")
        if select not in SELECTIONS:
            raise ConfigError(f"unknown NetAdapt selection {select!r}; choose one of {', '.join(SELECTIONS)}")
        if short_ft_steps < 0:
            raise ConfigError(f"--short-ft-steps must be >= 0, got {short_ft_steps}")
        if short_ft_steps:
            if evaluator.recovery is not None:
                raise ConfigError("--short-ft-steps needs an Evaluator that recovers networks by BatchNorm "
                                  "recalibration (proxy recover: bn)")
            evaluator = evaluator.with_recovery(
                ShortFinetune(evaluator.model, evaluator.proxy.calibration, short_ft_steps, short_ft_lr))
        super().__init__(evaluator, budget, evals, seed)
        self.step, self.decay, self.select = step, decay, select
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.dense_cost = float(evaluator.dense_cost(budget.metric))
        self.history: list[dict[str, Any]] = []
        self._runners_up: list[dict[str, int]] = []  # the last iteration's other candidates, best first

    def _run(self) -> None:
        kept = {u.name: u.channels for u in self.space.units}
        accuracy = self._dense_accuracy() if self.select == "drop-per-cost" else None
        predicted = measured = self.cost(kept)
        iteration = 0
        while measured > self.limit:
            limit = self.limit * predicted / measured  # the limit in predicted units, corrected by what was measured
            scheduled = self.step * self.decay**iteration * self.dense_cost
            reduction = min(scheduled, predicted - limit, self._reachable(kept, predicted))
            cuts = self._cuts(kept, predicted - reduction)
            left = self.evals - self.result.evaluations
            last = reduction >= predicted - limit  # this iteration can meet the budget
            chosen = None
            if cuts and left >= len(cuts) + (not last):  # else keep one evaluation for the projection
                chosen = self._iteration(iteration, kept, cuts, predicted - reduction, accuracy)
            if chosen is None:  # no room for another iteration, or every candidate failed
                for start in [kept, *self._runners_up][: self.evals - self.result.evaluations]:
                    self._final(iteration, "projection", self.project(self.space.policy_from_kept(start)))
                return
            kept, accuracy = dict(chosen.kept), chosen.proxy_acc
            predicted = self.cost(kept)
            measured = max(predicted, chosen.value(self.metric) or 0.0) if self.metric.measured else predicted
            iteration += 1
        if not self.metric.measured and self.result.evaluations < self.evals:
            filled = fill_budget(kept, {n: kept[n] / self.space.unit(n).channels for n in kept}, self.space, self.cost, self.limit)
            if filled != kept:
                self._final(iteration, "fill", self.space.policy_from_kept(filled))

    def _reachable(self, kept: dict[str, int], current: float) -> float:
        """The largest reduction that half of the units that can still shrink reach alone (0 if none can)."""
        reductions = sorted((current - self.cost({**kept, u.name: u.min_kept}) for u in self.space.units
                             if u.min_kept < kept[u.name]), reverse=True)
        return reductions[(len(reductions) - 1) // 2] if reductions else 0.0

    def _cuts(self, kept: dict[str, int], target: float) -> dict[str, int]:
        """Per unit, the most channels below its current count whose cost reaches ``target``; units that
        cannot reach it alone are left out."""
        cuts = {}
        for u in self.space.units:
            options = [k for k in u.allowed_kept if k < kept[u.name]]
            i = bisect.bisect_left(options, True, key=lambda k: self.cost({**kept, u.name: k}) > target)
            if i:
                cuts[u.name] = options[i - 1]
        return cuts

    def _iteration(self, iteration: int, kept: dict[str, int], cuts: dict[str, int], target: float,
                   accuracy: float | None) -> Candidate | None:
        """Evaluate every unit's cut and return the best candidate (None if all failed)."""
        before = self.cost(kept)
        scored = []
        for name, k in cuts.items():
            trial = {**kept, name: k}
            candidate = self.evaluate(self.space.policy_from_kept(trial), {"iteration": iteration, "unit": name})
            resource = self.cost(trial)
            if candidate.ok:
                saved = max(before - resource, 1e-12)
                drop = (accuracy - candidate.proxy_acc) / saved if accuracy is not None else 0.0  # type: ignore[operator]
                scored.append((candidate, resource, drop))
            self.history.append({"iteration": iteration, "unit": name, "kept": k, "target": target, "resource": resource,
                                 "accuracy": candidate.proxy_acc, "latency_ms": candidate.latency_ms,
                                 "status": candidate.status, "chosen": False})
        if not scored:
            return None
        key = (lambda s: s[0].proxy_acc) if self.select == "acc" else (lambda s: -s[2])
        ranked = [s[0] for s in sorted(scored, key=key, reverse=True)]
        best, self._runners_up = ranked[0], [dict(c.kept) for c in ranked[1:]]
        for row in self.history[-len(cuts):]:
            row["chosen"] = row["unit"] == best.meta.get("unit")
        self._write_history()
        return best

    def _final(self, iteration: int, step: str, policy: Policy) -> None:
        """Evaluate the projection or fill that ends the search, and record it in the history."""
        candidate = self.evaluate(policy, {"iteration": iteration, "step": step})
        self.history.append({"iteration": iteration, "unit": f"({step})", "kept": None, "target": self.limit,
                             "resource": self.cost(candidate.kept), "accuracy": candidate.proxy_acc,
                             "latency_ms": candidate.latency_ms, "status": candidate.status, "chosen": True})
        self._write_history()

    def _dense_accuracy(self) -> float | None:
        """Proxy accuracy of the dense network (for the drop-per-cost selection)."""
        dense = self.evaluate(self.space.policy_from_kept({u.name: u.channels for u in self.space.units}),
                              {"iteration": -1, "step": "dense"})
        return dense.proxy_acc

    def _write_history(self) -> None:
        if self.run_dir is not None:
            pd.DataFrame(self.history).to_csv(self.run_dir / "netadapt.csv", index=False)
