"""``autoprune bench``: the --quick matrix on the digits demo, its report, resuming, and bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from autoprune.bench.harness import benchmark, run_bench
from autoprune.bench.machine import library_versions, source_revision
from autoprune.bench.report import COLUMNS, ablation_table, cells_frame, comparison_table, measured_on
from autoprune.bench.settings import (
    DEFAULT_METHODS,
    BenchSettings,
    parse_budgets,
    parse_method,
)
from autoprune.cli import main
from autoprune.core.budget import Budget
from autoprune.core.cost import fvcore_flops
from autoprune.errors import BudgetError, ConfigError
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.search import get_searcher

BUDGETS = ("0.3flops", "0.5flops", "0.7flops")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``autoprune bench --quick``: every default method at three budgets on the digits demo."""
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--quick", "--quiet", "--out", str(out)]) == 0
    return out


def _cells(out: Path) -> list[Path]:
    return sorted((out / "cells" / "digits-demo").rglob("*-e6-s0.json"))


def test_quick_runs_every_method_at_every_budget(quick):
    cells = [json.loads(p.read_text()) for p in _cells(quick)]
    assert {(c["method"], c["budget"]) for c in cells} == {(m, b) for m in DEFAULT_METHODS for b in BUDGETS}
    for c in cells:
        limit = Budget.parse(c["budget"]).value * c["dense_flops"]
        assert c["flops"] <= limit  # every method's best policy meets its budget
        assert 0.0 <= c["proxy_acc"] <= 1.0 and 0.0 <= c["report_acc"] <= 1.0 and 0.0 <= c["finetuned_acc"] <= 1.0
        assert c["latency_ms"] > 0 and c["seconds"] > 0 and 0 < c["reference_ms_per_image"] < 1000
        assert 1 <= c["distinct"] <= c["evals"] <= 6 and len(c["curve"]) == c["evals"]
        assert c["neighbours"] == 0  # (no agent moves a repeat unless --on-repeat neighbour)
        assert set(c["kept"]) == set(c["channels"]) and all(0 < c["kept"][u] <= c["channels"][u] for u in c["kept"])


def test_cell_flops_are_fvcore_counts_of_the_rebuilt_network(quick):
    cell = json.loads((quick / "cells" / "digits-demo" / "0.5flops" / "optuna-tpe-e6-s0.json").read_text())
    exp = Experiment.from_config(load_env("digits-demo"))
    network = exp.evaluator.pruner.prune(cell["kept"])
    assert fvcore_flops(network, exp.example_inputs) == cell["flops"]
    assert fvcore_flops(exp.model, exp.example_inputs) == cell["dense_flops"]


def test_quick_report_structure(quick):
    md = (quick / "digits-demo.md").read_text()
    for line in ("- date:", "- machine:", "- python", "- command: `autoprune bench --quick", "- dense network, scored "
                 "exactly like a candidate: proxy", "- fine-tune, the same for every method: 1 epoch of"):
        assert line in md, line
    for budget in BUDGETS:
        section = md.split(f"## {budget}\n", 1)[1].split("\n## ", 1)[0]
        rows = [r for r in section.splitlines() if r.startswith("| ") and " ± " in r]
        assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == list(DEFAULT_METHODS)
        assert "| best mean |" in section and "| ddpg − random (points) |" in section
    frame = pd.read_csv(quick / "digits-demo.csv")
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(DEFAULT_METHODS) * len(BUDGETS)
    assert frame["machine"].nunique() == 1 and frame["versions"].nunique() == 1
    assert f"- cells measured on: {frame['machine'][0]}; {frame['versions'][0]} (24 cells, finished" in md
    assert frame["versions"][0].startswith("python ") and " torch " in frame["versions"][0]
    assert (frame["flops_fraction"] <= frame["budget"].str.removesuffix("flops").astype(float)).all()
    for plot in ("tradeoff", "ratios", "curves"):
        path = quick / f"digits-demo-{plot}.png"
        assert path.read_bytes()[:8] == PNG and f"]({path.name})" in md


def test_rerun_resumes_without_redoing_cells(quick, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in _cells(quick)}
    redo = quick / "cells" / "digits-demo" / "0.5flops" / "random-e6-s0.json"
    redo.unlink()  # as if the run had stopped in that cell
    capsys.readouterr()
    assert main(["bench", "--quick", "--quiet", "--out", str(quick)]) == 0
    assert "24 of 24 cells finished" in capsys.readouterr().out
    assert redo.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != redo)


def test_report_only_reads_finished_cells(quick, capsys):
    assert main(["bench", "--quick", "--seeds", "2", "--quiet", "--out", str(quick), "--report-only"]) == 0
    assert "24 of 42 cells finished" in capsys.readouterr().out  # seed 1 of the 6 stochastic methods is missing


def test_report_keeps_the_findings_written_beside_the_cells(quick):
    (quick / "cells" / "digits-demo" / "findings.md").write_text("DDPG repeats policies at 0.3flops.\n")
    try:
        assert main(["bench", "--quick", "--quiet", "--out", str(quick), "--report-only"]) == 0
        report = (quick / "digits-demo.md").read_text()
    finally:
        (quick / "cells" / "digits-demo" / "findings.md").unlink()
    assert report.endswith("## Findings\n\n_Written by hand in `cells/digits-demo/findings.md` from the cells above; "
                           "a rewrite of this report keeps it._\n\nDDPG repeats policies at 0.3flops.\n")


def test_python_api_rewrites_the_report_of_the_cli_cells(quick):
    settings = BenchSettings(env=load_env("digits-demo").to_dict(), budgets=BUDGETS, seeds=1, evals=6,
                             finetune_epochs=1, finetune_images=256, out=str(quick))
    files, finished = benchmark(settings, report_only=True, progress=False, command=["python", "bench.py"])
    assert finished == len(DEFAULT_METHODS) * len(BUDGETS) == len(settings.cells())
    assert files[0] == quick / "digits-demo.md" and "- command: `python bench.py`" in files[0].read_text()
    with pytest.raises(ConfigError, match="other settings"):
        benchmark(BenchSettings(**{**settings.__dict__, "finetune_epochs": 2}), report_only=True)


def test_other_settings_do_not_reuse_cells(quick, cli):
    code, _, err = cli("bench", "--quick", "--finetune-epochs", "2", "--out", str(quick), "--quiet")
    assert code == 2 and "other settings (finetune_epochs 1, now 2)" in err and len(err.splitlines()) == 1


def test_cells_of_another_calibration_name_the_option_that_resumes_them(quick, cli):
    code, _, err = cli("bench", "--quick", "--calibration-images", "128", "--out", str(quick), "--quiet")
    assert code == 2 and len(err.splitlines()) == 1
    assert "env.proxy.calibration_batches 4, now 1" in err and "(--calibration-images 512 for these cells)" in err
    code, _, err = cli("bench", "--quick", "--calibration-images", "512", "--out", str(quick), "--quiet", "--report-only")
    assert code == 0, err  # 512 images in batches of 128 are the preset's 4 batches: the same cells


def test_cells_run_seed_by_seed_and_deterministic_methods_once():
    settings = BenchSettings(env=load_env("digits-demo").to_dict(), budgets=("0.5flops",),
                             methods=("uniform", "random", "netadapt", "ddpg"), seeds=3)
    assert settings.cells() == [(0, "0.5flops", "uniform"), (0, "0.5flops", "random"), (0, "0.5flops", "netadapt"),
                                (0, "0.5flops", "ddpg"), (1, "0.5flops", "random"), (1, "0.5flops", "ddpg"),
                                (2, "0.5flops", "random"), (2, "0.5flops", "ddpg")]
    search = settings.search_settings("0.5flops", "ddpg", 2)
    assert (search.method, search.seed, search.method_options["warmup"]) == ("ddpg", 2, 100)
    assert settings.search_settings("0.5flops", "optuna-cmaes", 0).sampler == "cmaes"
    assert settings.search_settings("0.5flops", "sac+sensitivity", 0).method_options == {"prior": "sensitivity",
                                                                                         "warmup": 100}


def test_racing_stages_reach_the_cells_of_racing_methods_only():
    settings = BenchSettings(env=load_env("digits-demo").to_dict(), budgets=("0.5flops",), racing="50,100")
    settings.check()
    assert settings.search_settings("0.5flops", "random", 0).racing == "50,100"
    assert settings.search_settings("0.5flops", "random@full", 0).racing == "off"
    assert settings.search_settings("0.5flops", "sensitivity", 0).racing == "on"  # the default; it does not race
    exp = settings.search_settings("0.5flops", "evolution", 0).experiment()
    assert exp.evaluator.racing.stages == (50, 100, len(exp.evaluator.proxy))


def test_parse_budgets_and_methods():
    assert parse_budgets("0.3, 0.5,0.7") == BUDGETS
    assert parse_budgets("0.5flops,0.6params,2.5ms") == ("0.5flops", "0.6params", "2.5ms")
    with pytest.raises(BudgetError):
        parse_budgets("0.5,1.5")
    assert parse_method("optuna-tpe") == ("optuna", "tpe", None) and parse_method("sac") == ("sac", None, None)
    assert parse_method("ddpg+sensitivity") == ("ddpg", None, "sensitivity")
    assert parse_method("optuna-cmaes+sensitivity") == ("optuna", "cmaes", "sensitivity")
    for bad in ("optuna", "optuna-foo", "a2c", "ddpg+foo", "random+sensitivity"):
        with pytest.raises(ConfigError):
            parse_method(bad)


def netadapt_step(budget: Budget, units: int, evals: int) -> float:
    return get_searcher("netadapt").benchmark_options(budget, evals, units)["step"]


def test_netadapt_step_fits_the_evaluations():
    assert netadapt_step(Budget.parse("0.5flops"), 27, 200) == pytest.approx(0.5 / 6)
    assert netadapt_step(Budget.parse("0.7flops"), 9, 300) == 0.025  # never below the default step
    assert netadapt_step(Budget.parse("0.3flops"), 50, 60) == 0.5


def test_comparison_marks_gains_beyond_one_std():
    frame = pd.DataFrame({
        "method": ["uniform", "random", "random", "tpe", "tpe", "lucky"],
        "proxy_acc": [0.40, 0.50, 0.54, 0.60, 0.62, 0.55],
    })
    rows = comparison_table(frame, [("proxy_acc", "proxy acc")])
    assert rows[2] == "| best mean | **tpe** |"
    assert "| tpe − uniform (points) | +21.00 ✓ |" in rows
    assert "| tpe − random (points) | +9.00 ✓ |" in rows  # 9 points > the larger std (2.83)
    assert "| lucky − random (points) | +3.00 ? |" in rows  # one seed: no std to judge by


def test_ablation_compares_each_variant_with_its_methods_defaults():
    frame = pd.DataFrame({
        "method": ["sac"] * 3 + ["sac:action-mode=amc"] * 3 + ["sac:reward-norm=baseline"] * 3 + ["random"] * 2
                  + ["ddpg:action-mode=amc"],
        "report_acc": [0.66, 0.67, 0.68, 0.50, 0.52, 0.51, 0.665, 0.675, 0.67, 0.60, 0.61, 0.40],
    })
    rows = ablation_table(frame, [("report_acc", "test acc")])
    assert rows[-2:] == ["| sac:action-mode=amc − sac | -16.00 ✓ |", "| sac:reward-norm=baseline − sac | +0.00 |"]
    # a variant with more options is compared with the row it adds options to
    more = pd.concat([frame, pd.DataFrame({"method": ["sac:reward-norm=baseline,updates=1"] * 2,
                                           "report_acc": [0.665, 0.675]})])
    rows = ablation_table(more, [("report_acc", "test acc")])
    assert rows[-1] == "| sac:reward-norm=baseline,updates=1 − sac:reward-norm=baseline | +0.00 |"
    assert not any("ddpg" in r for r in rows)  # its defaults are not in the frame: nothing to compare with
    assert ablation_table(frame[frame["method"] != "sac"], [("report_acc", "test acc")]) == []


def test_versions_name_the_commit_autoprune_runs_from():
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("autoprune does not run from a git checkout here")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    revision = source_revision()
    assert revision is not None and head.startswith(revision.removesuffix("+")) and len(revision) >= 7
    assert f"autoprune {metadata.version('autoprune')} (git {revision})," in library_versions()


def test_header_names_each_machine_and_library_set_the_cells_ran_on():
    base = {"method": "random", "budget": "0.5flops", "seed": 0, "evals": 10, "seconds": 5.0, "proxy_acc": 0.5,
            "report_acc": 0.5, "flops": 5, "dense_flops": 10, "params": 3}
    cells = [{**base, "machine": "box", "versions": "python 3.11; torch 2.14", "finished": "2026-11-28 10:00 UTC",
              "reference_ms_per_image": 3.4},
             {**base, "machine": "box", "versions": "python 3.11; torch 2.14", "finished": "2026-11-28 11:00 UTC",
              "reference_ms_per_image": 3.1},
             {**base, "machine": "box", "versions": "python 3.11; torch 2.15", "finished": "2026-11-21 09:00 UTC"},
             {**base, "machine": "box", "finished": "2026-11-21 08:00 UTC"},  # made before cells recorded versions
             base]  # made before cells recorded their machine
    assert measured_on(cells_frame(cells)) == [
        "- cells measured on: box; python 3.11; torch 2.14 (2 cells, finished 2026-11-28 10:00 UTC to 2026-11-28 11:00 UTC; "
        "the dense network's forward passes took 3.10-3.40 ms of CPU per image at the end of 2 cells (the machine's "
        "speed then: compare seconds through it))",
        "- cells measured on: box; python 3.11; torch 2.15 (1 cells, finished 2026-11-21 09:00 UTC to 2026-11-21 09:00 UTC)",
        "- cells measured on: box (1 cells, finished 2026-11-21 08:00 UTC to 2026-11-21 08:00 UTC)",
        "- 1 cells do not record their machine (made before autoprune recorded it)",
    ]


@pytest.mark.parametrize("args, key", [
    (["--methods", "random,a2c"], "unknown search method 'a2c'"),
    (["--methods", "optuna"], "optuna-tpe"),
    (["--methods", "optuna-foo"], "unknown Optuna sampler"),
    (["--budgets", "0.5foo"], "cannot parse budget"),
    (["--budgets", "0.0001flops"], "0.0001flops"),
    (["--budgets", "0.6latency", "--methods", "ddpg"], "latency budget"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--evals", "0"], "--evals must be >= 1"),
    (["--finetune-epochs", "-1"], "--finetune-epochs"),
    (["--env", "nope"], "nope"),
    (["--report-only"], "no finished cells"),
    (["--name", "../elsewhere"], "plain file name"),
    (["--racing", "fast"], "--racing 'fast'"),
])
def test_bad_input(fails, args, key):
    assert key in fails("bench", "--quick", "--out", "bench", *args)



def test_workers_share_a_matrix_through_cell_claims(tmp_path):
    """A cell claimed by a live process is left to it; a claim left by a dead process is taken over."""
    settings = BenchSettings(env=load_env("digits-demo").to_dict(), budgets=("0.5flops",),
                             methods=("uniform", "random", "optuna-tpe"), seeds=1, evals=2, latency=False,
                             out=str(tmp_path))
    held, stale = settings.cell_path("0.5flops", "random", 0), settings.cell_path("0.5flops", "optuna-tpe", 0)
    held.parent.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held.with_name(held.name + ".lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")  # alive: pytest's parent
    stale.with_name(stale.name + ".lock").write_text(f"{socket.gethostname()} {int(gone.stdout)}\n")  # exited
    cells = run_bench(settings, progress=False)
    assert [c["method"] for c in cells] == ["uniform", "optuna-tpe"]
    assert not held.is_file() and held.with_name(held.name + ".lock").is_file()
    assert not stale.with_name(stale.name + ".lock").exists()  # released after the cell


def test_workers_study_reports_speed_up_and_quality():
    from autoprune.bench.studies.workers import report_lines

    cell = {"method": "random", "proxy_acc": 0.5, "report_acc": 0.4}
    cells = [{**cell, "workers": 1, "seed": 0, "seconds": 100.0, "wall_seconds": 120.0},
             {**cell, "workers": 1, "seed": 1, "seconds": 110.0, "wall_seconds": 130.0},
             {**cell, "workers": 2, "seed": 0, "seconds": 50.0, "wall_seconds": 70.0, "proxy_acc": 0.52},
             {**cell, "workers": 2, "seed": 1, "seconds": 60.0, "wall_seconds": 80.0, "proxy_acc": 0.52}]
    cells += [{**c, "method": "evolution", "speculative": 0, "speculative_dropped": 0} for c in cells[:2]]
    cells += [{**c, "method": "evolution", "speculative": n, "speculative_dropped": n - 1}
              for c, n in zip(cells[2:4], (5, 7))]
    lines = report_lines(cells, [1, 2])
    assert lines[2] == ("| random | 1 | 2 | 105.0 ± 7.1 | 1.00x | 1.00 ± 0.00x | 125.0 ± 7.1 | 1.00x | 50.00 ± 0.00 "
                        "| 40.00 ± 0.00 | — | — |")
    assert lines[3] == ("| random | 2 | 2 | 55.0 ± 7.1 | 1.91x | 1.92 ± 0.12x | 75.0 ± 7.1 | 1.67x | 52.00 ± 0.00 "
                        "| 40.00 ± 0.00 | no | — |")
    assert lines[5].startswith("| evolution | 2 | 2 | 55.0 ± 7.1 | 1.91x") and lines[5].endswith("| 6.0 ± 1.4 / 5.0 ± 1.4 |")


@pytest.mark.slow
def test_workers_study_end_to_end_on_digits(tmp_path, monkeypatch, capsys):
    from autoprune.bench.studies.workers import main as workers

    monkeypatch.chdir(tmp_path)
    assert workers(["--env", "digits-demo", "--evals", "4", "--seeds", "1", "--methods", "random", "--cells", "cells"]) == 0
    cells = sorted((tmp_path / "cells" / "workers-digits-demo" / "0.5flops").glob("*.json"))
    assert [c.name for c in cells] == ["random-w1-e4-s0.json", "random-w2-e4-s0.json"]
    for path in cells:
        cell = json.loads(path.read_text())
        assert cell["evals"] == 4 and 0 < cell["seconds"] <= cell["wall_seconds"] and cell["report_acc"] > 0.5
    report = (tmp_path / "results" / "workers-digits-demo.md").read_text()
    assert "| random | 2 | 1 |" in report and "goal: at least 1.7x" in report
    before = cells[0].stat().st_mtime
    assert workers(["--env", "digits-demo", "--evals", "4", "--seeds", "1", "--methods", "random", "--cells", "cells"]) == 0
    assert cells[0].stat().st_mtime == before  # finished cells are skipped
