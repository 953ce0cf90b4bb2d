"""Benchmark specs with racing off (``@full``), cells made before racing, and the time-to-quality report."""

from __future__ import annotations

import json

import pytest

from autoprune.bench.anytime import anytime_section, best_at, reference, time_to, timed
from autoprune.bench.harness import check_identity
from autoprune.bench.settings import BenchSettings, full_fidelity, parse_method
from autoprune.errors import ConfigError
from autoprune.presets import load_env


def test_full_fidelity_specs():
    assert full_fidelity("optuna-cmaes@full") == ("optuna-cmaes", True) and full_fidelity("random") == ("random", False)
    assert parse_method("optuna-cmaes@full") == ("optuna", "cmaes", None)
    assert parse_method("evolution+sensitivity@full") == ("evolution", None, "sensitivity")
    with pytest.raises(ConfigError, match="@full"):
        parse_method("netadapt@full")
    settings = BenchSettings(env=load_env("digits-demo").to_dict(), budgets=("0.5flops",),
                             methods=("random", "random@full", "sensitivity"))
    assert settings.search_settings("0.5flops", "random", 0).racing == "on"
    assert settings.search_settings("0.5flops", "random@full", 0).racing == "off"
    assert settings.search_settings("0.5flops", "sensitivity", 0).racing == "on"  # does not race: left alone
    off = BenchSettings(env=settings.env, budgets=("0.5flops",), methods=("random",), racing="off")
    assert off.search_settings("0.5flops", "random", 0).racing == "off"
    assert settings.cell_path("0.5flops", "random@full", 1).name == "random@full-e300-s1.json"


def test_cells_made_before_racing_need_racing_off(tmp_path):
    env = load_env("digits-demo").to_dict()
    settings = BenchSettings(env=env, budgets=("0.5flops",), methods=("random",), out=str(tmp_path))
    settings.cell_dir.mkdir(parents=True)
    old = {k: v for k, v in settings.identity().items() if k != "racing"}  # an identity written before racing
    (settings.cell_dir / "bench.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="racing"):
        check_identity(settings)
    check_identity(BenchSettings(env=env, budgets=("0.5flops",), methods=("random",), out=str(tmp_path), racing="off"))


def _cell(method, seed, curve, seconds, proxy, racing=None):
    return {"method": method, "seed": seed, "budget": "0.5flops", "curve": curve, "curve_seconds": seconds,
            "seconds": seconds[-1], "proxy_acc": proxy, "report_acc": proxy - 0.02, "racing": racing}


def test_time_to_quality_reads_the_best_so_far_against_seconds():
    cells = [_cell("random", 0, [None, 0.5, 0.6, 0.7], [1.0, 2.0, 3.0, 4.0], 0.7, racing=[250, 500, 1000]),
             _cell("random@full", 0, [0.4, 0.6, 0.6, 0.72], [5.0, 10.0, 15.0, 20.0], 0.72),
             *(_cell("optuna-cmaes@full", s, [0.5, 0.65], [8.0, 16.0], p) for s, p in ((0, 0.65), (1, 0.69)))]
    fast, slow, *cma = timed(cells)  # wall-clock seconds: these cells recorded no CPU time
    assert best_at(fast, 0.5) is None and best_at(fast, 2.5) == 0.5 and best_at(fast, 100) == 0.7
    assert time_to(fast, 0.6) == 3.0 and time_to(slow, 0.6) == 10.0 and time_to(slow, 0.9) is None
    assert reference([fast, slow, *cma]) == ("optuna-cmaes@full", pytest.approx(0.67))
    lines = anytime_section(cells)
    table = "\n".join(lines)
    assert "### 0.5flops (longest cell 20 wall-clock s)" in table
    fast_row = next(line for line in lines if line.startswith("| random |"))
    assert "250→500→1000" in fast_row and "70.00 ± 0.00" in fast_row and "| 4 ± 0 | 4 ± 0 | 1/1 |" in fast_row
    slow_row = next(line for line in lines if line.startswith("| random@full |"))
    assert "| 40.00 ± 0.00 |" in slow_row and "| 20 ± 0 | 20 ± 0 | 1/1 |" in slow_row  # 10% of 20 s: its first value
    assert anytime_section([{**cells[0], "curve_seconds": None}]) == []  # cells made before timings: no section
    with_cpu = [{**c, "curve_cpu_seconds": [t / 2 for t in c["curve_seconds"]], "cpu_seconds": c["seconds"] / 2}
                for c in cells]
    assert "longest cell 10 CPU s" in "\n".join(anytime_section(with_cpu))  # CPU time when every cell has it
    assert time_to(timed(with_cpu)[1], 0.6) == 5.0


def test_mean_std_uses_the_sample_std_and_leaves_out_what_was_not_measured():
    from autoprune.bench.stats import mean_std

    assert mean_std([0.5, 0.7]) == "60.00 ± 14.14"
    assert mean_std([0.5, float("nan"), 0.7]) == "60.00 ± 14.14"
    assert mean_std([3.0], 1, 1) == "3.0 ± 0.0"
    assert mean_std([]) == mean_std([float("nan")]) == "—"
