"""``python -m autoprune.bench.studies.warmup``: where the rl warm-up and random search put the cut, on the digits demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprune.bench.studies import warmup
from autoprune.core.budget import Budget
from autoprune.experiment import Experiment
from autoprune.presets import load_env


@pytest.fixture(scope="module")
def digits() -> Experiment:
    return Experiment.from_config(load_env("digits-demo"))


@pytest.mark.parametrize("budget", ["0.3flops", "0.5flops", "0.7flops"])
def test_both_samplers_meet_the_budget_and_spend_it(digits, budget):
    ev, b = digits.evaluator, Budget.parse(budget)
    for table in (warmup.warmup_policies(ev, b, 20, seed=0), warmup.projected_policies(ev, b, 20, seed=0)):
        assert table.shape == (20, len(digits.space))
        lows = np.array([u.min_ratio for u in digits.space.units])
        tops = np.array([u.max_ratio for u in digits.space.units])
        assert (table >= lows - 1e-9).all() and (table <= tops + 1e-9).all()
        for row in table:
            flops = ev.cost.flops(digits.space.kept(dict(zip(digits.space.names, row))))
            assert 0.95 * b.value * ev.cost.dense_flops <= flops <= b.value * ev.cost.dense_flops
        assert len({tuple(r) for r in table}) > 1  # random, not one policy repeated


def test_warmup_cuts_the_last_units_hardest_at_a_tight_budget(digits):
    """The clip makes the last unit absorb what random early actions left (the effect the report measures)."""
    ev, b = digits.evaluator, Budget.parse("0.3flops")
    clipped = warmup.warmup_policies(ev, b, 100, seed=0).mean(axis=0)
    projected = warmup.projected_policies(ev, b, 100, seed=0).mean(axis=0)
    assert clipped[-1] > clipped[0] and clipped[-1] > projected[-1]


def test_blocks_are_top_level_modules():
    assert warmup.blocks(["layer1.0.conv1", "layer1.1.conv1", "layer3.8.conv1", "features.0"]) == [
        "layer1", "layer1", "layer3", "features"]


def test_report_and_plot(tmp_path: Path):
    assert warmup.main(["--env", "digits-demo", "--budgets", "0.4,0.6", "--episodes", "10", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "warmup-digits-demo.md").read_text()
    assert "- command: `python -m autoprune.bench.studies.warmup --env digits-demo" in md
    rows = [r for r in md.splitlines() if r.startswith("| 0.")]
    assert [r.split(" | ")[:2] for r in rows] == [["| 0.4flops", s] for s in warmup.SAMPLERS] + [
        ["| 0.6flops", s] for s in warmup.SAMPLERS]
    for row in rows:
        budget, flops = float(row.split("flops", 1)[0].removeprefix("| ")), float(row.split(" | ")[-1].rstrip(" |"))
        assert 0.95 * budget <= flops <= budget
    assert (tmp_path / "warmup-digits-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--budgets", "0.5foo"], "cannot parse budget"),
    (["--budgets", "0.0001"], "0.0001flops"),
    (["--env", "nope"], "unknown env preset 'nope'"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        warmup.main(["--env", "digits-demo", "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("python -m autoprune.bench.studies.warmup: error:") and message in err
    assert not (tmp_path / "out").exists()
