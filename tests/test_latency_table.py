"""The latency lookup table: structure, calibration, caching, and the devices it can time on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.core.budget import Budget
from autoprune.core.cost import LatencySettings, resolve_device
from autoprune.core.latency_table import (
    LATENCY_MODELS,
    Interaction,
    LatencyTable,
    latency_table_for,
    resolve_latency_model,
)
from autoprune.core.space import SearchSpace, SpaceConfig
from autoprune.errors import ConfigError
from autoprune.search import get_searcher

FAST = LatencySettings(repeats=5, warmup=1)


class Chain(nn.Module):
    """Three 3x3 conv-BN-ReLU layers of 64 channels: each middle conv is shared by two units."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in in (3, 64, 64):
            layers += [nn.Conv2d(c_in, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def chain() -> tuple[nn.Module, torch.Tensor, SearchSpace, LatencyTable]:
    torch.manual_seed(0)
    model, x = Chain().eval(), torch.randn(1, 3, 32, 32)
    space = SearchSpace.from_model(model, x, SpaceConfig(max_ratio=0.75, round_to=16))
    return model, x, space, LatencyTable.build(model, x, space, FAST, pair_points=3)


def test_table_has_an_entry_for_every_allowed_kept_count(chain):
    _, _, space, table = chain
    assert len(space) == 3
    for unit in space.units:
        assert unit.allowed_kept == (16, 32, 48, 64)
        assert set(table.savings[unit.name]) == {16, 32, 48, 64}
        assert table.savings[unit.name][64] == 0.0
    assert table.entries == 12
    # features.3 has its input channels from unit features.0 and its outputs in unit features.3 (and so on)
    assert {(i.module, i.in_unit, i.out_unit) for i in table.interactions} == {
        ("features.3", "features.0", "features.3"), ("features.6", "features.3", "features.6")}


def test_measured_table_is_anchored_at_the_dense_latency(chain):
    model, x, space, table = chain
    dense = {u.name: u.channels for u in space.units}
    assert table.predict(dense) == pytest.approx(table.dense_ms)
    assert table.dense_ms > 0 and table.scale >= 0
    assert len(table.calibration) == 3


def test_builder_fits_the_calibration_scale_to_fixed_timings(monkeypatch):
    """Timings injected into the builder: each unit saves 1 ms per quarter of its channels removed,
    whole networks measure 1.5x the summed savings, so the scale is 1.5 and predictions fall with channels."""
    import autoprune.core.latency_table as lt

    torch.manual_seed(0)
    model, x = Chain().eval(), torch.randn(1, 3, 32, 32)
    space = SearchSpace.from_model(model, x, SpaceConfig(max_ratio=0.75, round_to=16))
    fixed = {u.name: {k: (64 - k) / 16 for k in u.allowed_kept} for u in space.units}

    def removed_quarters(network: nn.Module) -> float:
        return sum((64 - m.out_channels) / 16 for m in network.modules() if isinstance(m, nn.Conv2d))

    monkeypatch.setattr(lt, "measure_latency", lambda *args, **kwargs: 10.0)
    monkeypatch.setattr(lt._LayerTimer, "savings", lambda self, points, pair_points: (fixed, ()))
    monkeypatch.setattr(lt, "paired_latency", lambda network, reference, x, settings: (
        10.0 - 1.5 * removed_quarters(network), 10.0))
    table = LatencyTable.build(model, x, space, FAST)
    assert table.scale == pytest.approx(1.5)
    dense = {u.name: u.channels for u in space.units}
    assert table.predict(dense) == pytest.approx(10.0)
    assert table.predict({u.name: u.min_kept for u in space.units}) == pytest.approx(10.0 - 1.5 * 3 * 3)
    for unit in space.units:
        predictions = [table.predict({**dense, unit.name: k}) for k in unit.allowed_kept]
        assert predictions == sorted(predictions) and len(set(predictions)) == len(predictions)


def test_rebased_table_scales_every_prediction(chain):
    _, _, space, table = chain
    kept = {u.name: 32 for u in space.units}
    twice = table.rebased(2 * table.dense_ms)
    assert twice.predict(kept) == pytest.approx(2 * table.predict(kept))


def test_json_round_trip_keeps_predictions(chain):
    _, _, space, table = chain
    again = LatencyTable.from_json(table.to_json())
    for k in (16, 32, 48):
        kept = {u.name: k for u in space.units}
        assert again.predict(kept) == pytest.approx(table.predict(kept))
    with pytest.raises(ValueError):
        LatencyTable.from_json('{"format": "something else"}')


def test_interaction_is_bilinear_and_zero_at_dense():
    i = Interaction("conv", "a", "b", (8, 16), (4, 8), ((0.2, 0.0), (0.0, 0.0)))
    assert i.at(8, 4) == pytest.approx(0.2)
    assert i.at(16, 4) == 0.0 and i.at(8, 8) == 0.0
    assert i.at(12, 6) == pytest.approx(0.05)


def test_second_request_reads_the_cache(chain, monkeypatch):
    model, x, space, _ = chain
    first = latency_table_for(model, x, space, FAST, points=4, pair_points=2)

    def no_build(*args, **kwargs):
        raise AssertionError("the cached table should have been read")

    monkeypatch.setattr(LatencyTable, "build", no_build)
    again = latency_table_for(model, x, space, FAST, points=4, pair_points=2)
    assert again.savings == first.savings and again.reference_ms == first.reference_ms


def test_latency_model_defaults_and_errors():
    latency, flops = Budget.parse("0.6latency"), Budget.parse("0.5flops")
    assert resolve_latency_model(None, get_searcher("netadapt").latency_model, latency) == "lut"
    assert resolve_latency_model(None, get_searcher("sensitivity").latency_model, latency) == "lut"
    assert resolve_latency_model(None, get_searcher("random").latency_model, latency) == "measure"
    assert resolve_latency_model("lut", get_searcher("random").latency_model, latency) == "lut"
    assert resolve_latency_model(None, get_searcher("netadapt").latency_model, flops) is None
    with pytest.raises(ConfigError, match="applies to latency budgets"):
        resolve_latency_model("lut", get_searcher("netadapt").latency_model, flops)
    with pytest.raises(ConfigError, match="'fast'"):
        resolve_latency_model("fast", get_searcher("netadapt").latency_model, latency)
    assert LATENCY_MODELS == ("lut", "measure")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")
def test_table_refuses_a_device_that_cannot_be_timed(chain):
    model, x, space, _ = chain
    with pytest.raises(ConfigError, match="'cuda'"):
        LatencyTable.build(model, x, space, LatencySettings(device="cuda"))
    with pytest.raises(ConfigError, match="'nope'"):
        resolve_device("nope")

