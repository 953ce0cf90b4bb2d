"""Racing in the Evaluator: staged scoring equals one-shot scoring, a losing candidate stops with its estimate,
the fast forward path scores like the plain one, and a network that outputs NaN or raises is a failed candidate."""

from __future__ import annotations

import pytest
import torch

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Evaluator
from autoprune.core.policy import Policy
from autoprune.core.proxy import Proxy
from autoprune.core.racing import Racing
from autoprune.core.space import SearchSpace, SpaceConfig
from autoprune.errors import ConfigError
from autoprune.experiment import build_experiment
from autoprune.search import get_searcher
from autoprune.trials.record import decode_hits, encode_hits
from autoprune.zoo.digits import DigitsCNN
from autoprune.zoo.images import ImageSet


def test_racing_stages_parse_and_clip_to_the_proxy():
    assert Racing.parse("on", 1000).stages == (250, 500, 1000)
    assert Racing.parse("250,500", 1000).stages == (250, 500, 1000)
    assert Racing.parse("500, 250, 5000", 800).stages == (250, 500, 800)
    assert Racing.parse("off", 1000) is None
    for bad in ("fast", "0,10", "-5", ""):
        with pytest.raises(ConfigError, match="--racing"):
            Racing.parse(bad, 1000)
    with pytest.raises(ConfigError, match="confidence"):
        Racing.parse("on", 1000, confidence=1.2)


def test_paired_comparison_stops_only_clear_losers():
    racing = Racing((100, 1000), confidence=0.95)
    incumbent = torch.ones(1000, dtype=torch.bool)
    incumbent[::5] = False  # 80% right
    assert racing.loses(torch.zeros(100, dtype=torch.bool), incumbent, 1000)  # wrong on every image: stops
    assert not racing.loses(incumbent[:100].clone(), incumbent, 1000)  # identical so far: may still win
    near = incumbent[:100].clone()
    near[1] = False  # one image worse out of 100: far inside the noise of the 900 unseen images
    assert not racing.loses(near, incumbent, 1000)
    worse = incumbent.clone()
    worse[1:400:2] = False  # 20 points worse on the first 400 images
    assert racing.loses(worse[:400], incumbent, 1000)
    slightly = incumbent[:100].clone()
    slightly[torch.nonzero(slightly).flatten()[:8]] = False  # 8 points worse on 100 images
    assert racing.loses(slightly, incumbent, 1000)
    assert not Racing((100, 1000), confidence=0.9999).loses(slightly, incumbent, 1000)  # stricter: goes on


@pytest.fixture(scope="module")
def digits():
    return build_experiment("digits-demo", racing="on")


def test_staged_recalibration_continues_to_the_full_statistics(digits):
    ev = digits.evaluator
    network = ev.build(Policy.uniform(digits.space.names, 0.5))
    whole = ev.proxy.prepare(ev.build(Policy.uniform(digits.space.names, 0.5)))
    ev.proxy.prepare(network, batches=(0, 1))
    staged = ev.proxy.prepare(network, batches=(1, len(ev.proxy.calibration)))
    for a, b in zip(whole.state_dict().values(), staged.state_dict().values()):
        assert torch.equal(a, b)


def test_staged_scoring_equals_one_shot_scoring(digits):
    ev = digits.evaluator
    policy = Policy.uniform(digits.space.names, 0.4)
    scoring = ev.start(policy)
    stages = ev.racing.stages
    estimates = [scoring.advance(n) for n in stages]
    candidate = scoring.finish()
    network = ev.build(policy)
    full = ev.proxy.score(network).accuracy
    assert candidate.ok and candidate.fidelity == len(ev.proxy) == stages[-1]
    assert candidate.proxy_acc == pytest.approx(full, abs=1e-12) and estimates[-1] == candidate.proxy_acc
    assert list(candidate.curve) == list(stages)
    early = (0, ev.racing.batches_before_last(len(ev.proxy.calibration)))  # the early batches only (digits: 1 of 4)
    assert early == (0, 1)
    first = ev.proxy.correct(ev.proxy.prepare(ev.build(policy), batches=early), 0, stages[0]).float().mean().item()
    assert candidate.curve[stages[0]] == pytest.approx(first, abs=1e-12)  # a prefix of the same image order


def test_a_clear_loser_stops_at_the_first_stage_and_is_rescored_without_racing(digits):
    ev = digits.evaluator
    incumbent = ev.evaluate(Policy.uniform(digits.space.names, 0.0))
    loser_policy = Policy({u.name: u.max_ratio for u in digits.space.units})
    loser = ev.evaluate(loser_policy, incumbent=incumbent)
    assert loser.stopped and not loser.ok and loser.fidelity == ev.racing.stages[0]
    assert list(loser.curve) == [ev.racing.stages[0]] and loser.proxy_acc == loser.curve[ev.racing.stages[0]]
    again = ev.evaluate(loser_policy, incumbent=incumbent)
    assert again.cached and again.stopped  # still racing: the cache answers
    full = ev.evaluate(loser_policy)  # no incumbent: scored on every image, from the images it already has
    assert full.ok and not full.cached and full.fidelity == len(ev.proxy) and full.proxy_acc < incumbent.proxy_acc


def test_fast_and_plain_forward_paths_score_the_same(digits):
    plain = build_experiment("digits-demo", {"proxy_forward": "plain"}).evaluator
    for ratio in (0.0, 0.3, 0.6):
        policy = Policy.uniform(digits.space.names, ratio)
        fast_hits = digits.evaluator.proxy.correct(digits.evaluator.proxy.prepare(digits.evaluator.build(policy)))
        plain_hits = plain.proxy.correct(plain.proxy.prepare(plain.build(policy)))
        assert torch.equal(fast_hits, plain_hits)
    with pytest.raises(ConfigError, match="forward"):
        build_experiment("digits-demo", {"proxy_forward": "turbo"})


class _Broken(DigitsCNN):
    """A network that outputs NaN, or raises, on a batch of images once it has fewer than ``floor`` channels in its
    first layer (tracing and the pruner's check run it on one image)."""

    def __init__(self, mode: str, floor: int) -> None:
        super().__init__(num_classes=3, widths=(8, 8, 16, 16, 16))
        self.mode, self.floor = mode, floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.features[0].out_channels < self.floor and not self.training and len(x) > 1:
            if self.mode == "nan":
                return out * float("nan")
            raise TypeError("this layer refuses so few channels")
        return out


@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_nan_or_raising_networks_are_failed_candidates_never_picked(mode):
    torch.manual_seed(0)
    model = _Broken(mode, floor=6).eval()
    images = torch.randn(96, 1, 8, 8)
    data = ImageSet(images, torch.randint(0, 3, (96,)), mean=(0.0,), std=(1.0,), scale=1.0)
    space = SearchSpace.from_model(model, images[:1], SpaceConfig())
    evaluator = Evaluator(model, images[:1], space, Proxy(data, data, batch_size=32), racing=Racing.parse("on", 96))
    failed = evaluator.evaluate(Policy.uniform(space.names, 0.5))
    assert failed.status == "fail" and failed.proxy_acc is None and failed.fidelity is None
    assert failed.reason.startswith("NonFiniteOutput" if mode == "nan" else "TypeError")
    result = get_searcher("random")(evaluator, Budget.parse("0.7flops"), evals=12, seed=0).search()
    assert any(c.status == "fail" for c in result.candidates) and any(c.ok for c in result.candidates)
    assert result.best is not None and result.best.ok and result.best.kept[space.names[0]] >= 6


def test_an_incumbent_another_worker_scored_is_raced_from_its_recorded_hits(digits, monkeypatch):
    """A worker records an incumbent's per-image hits on its trial; another worker's Evaluator adopts them and races
    against the incumbent without scoring it again, and the hits are the ones it would have computed."""
    incumbent = digits.evaluator.evaluate(Policy.uniform(digits.space.names, 0.25))
    recorded = encode_hits(digits.evaluator.full_hits(incumbent.kept))
    assert len(recorded) <= len(digits.evaluator.proxy) // 4  # packed bits: 1,000 images in 168 characters
    other = build_experiment("digits-demo", racing="on").evaluator  # another worker's
    rescored = other.hits(incumbent)  # what it had to do before: score the incumbent again
    fresh = build_experiment("digits-demo", racing="on").evaluator
    fresh.adopt_hits(incumbent.kept, decode_hits(recorded, len(fresh.proxy)))
    monkeypatch.setattr("autoprune.core.evaluator.Scoring.advance", lambda *a, **k: pytest.fail("scored again"))
    assert torch.equal(fresh.hits(incumbent), rescored)
    assert rescored.dtype == torch.bool and rescored.float().mean().item() == pytest.approx(incumbent.proxy_acc)


def test_early_recalibration_is_used_only_where_it_leaves_two_batches_for_the_last_stage():
    racing = Racing((250, 500, 1000), early_batches=1)
    assert [racing.batches_before_last(b) for b in (0, 1, 2, 3, 4, 10)] == [0, 1, 2, 1, 1, 1]
    assert Racing((250, 1000), early_batches=None).batches_before_last(4) == 4
