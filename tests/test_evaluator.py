"""The Evaluator: caching, timings, the label-free proxy and the user-module API."""

import torch

from autoprune.core.cost import LatencySettings
from autoprune.core.evaluator import Evaluator
from autoprune.core.policy import Policy
from autoprune.core.proxy import Proxy, recalibrate_batchnorm
from autoprune.core.space import SearchSpace, SpaceConfig
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.zoo.digits import DigitsCNN, load_digits_split, pretrained_digits_cnn
from autoprune.zoo.images import ImageSet


def test_repeats_are_cached_and_recorded():
    exp = Experiment.from_config(load_env("digits-demo"))
    seen = []
    exp.evaluator.observers.append(seen.append)
    policy = Policy.uniform(exp.space.names, 0.5)
    first = exp.evaluator.evaluate(policy)
    second = exp.evaluator.evaluate(Policy({n: 0.499 for n in exp.space.names}))  # rounds to the same channels
    assert not first.cached and second.cached
    assert second.proxy_acc == first.proxy_acc and second.kept == first.kept
    assert [c.index for c in seen] == [0, 1]
    assert set(first.timings) >= {"prune", "recalibrate", "score", "cost", "total"}
    assert 0.0 < exp.evaluator.overhead_fraction < 1.0
    assert first.flops < exp.evaluator.cost.dense_flops


def test_label_free_agreement_proxy_scores_dense_network_as_one():
    model = pretrained_digits_cnn()
    x = torch.zeros(1, 1, 8, 8)
    space = SearchSpace.from_model(model, x, SpaceConfig())
    proxy = Proxy(load_digits_split("train"), load_digits_split("val"), kind="agreement", calibration_batches=0)
    evaluator = Evaluator(model, x, space, proxy)
    dense = evaluator.evaluate(Policy.uniform(space.names, 0.0))
    pruned = evaluator.evaluate(Policy.uniform(space.names, 0.7))
    assert dense.proxy_acc == 1.0
    assert pruned.proxy_acc < 1.0


def test_any_user_module_with_float_tensors_and_latency():
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=3, widths=(8, 8, 16, 16, 16)).eval()
    images = torch.randn(64, 1, 8, 8)
    labels = torch.randint(0, 3, (64,))
    data = ImageSet(images, labels, mean=(0.0,), std=(1.0,), scale=1.0)
    space = SearchSpace.from_model(model, images[:1], SpaceConfig())
    evaluator = Evaluator(model, images[:1], space, Proxy(data, data, batch_size=32), latency=LatencySettings(repeats=3, warmup=1))
    candidate = evaluator.evaluate(Policy.uniform(space.names, 0.5))
    assert candidate.ok and 0.0 <= candidate.proxy_acc <= 1.0
    assert candidate.latency_ms is not None and candidate.latency_ms > 0


def test_batchnorm_recalibration_matches_batch_statistics():
    model = DigitsCNN().train()
    batch = torch.randn(256, 1, 8, 8)
    recalibrate_batchnorm(model, list(batch.split(64)))
    first_bn = model.features[1]
    with torch.no_grad():
        activations = model.features[0](batch)
    assert torch.allclose(first_bn.running_mean, activations.mean((0, 2, 3)), atol=1e-5)
    assert not model.training
