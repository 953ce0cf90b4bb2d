"""The proxy-sample study: final policies of a benchmark scored again on the whole proxy split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoprune.bench.studies.proxy_sample import main, rescore, summarize
from autoprune.cli import main as cli_main
from autoprune.core.budget import Budget
from autoprune.experiment import build_experiment
from autoprune.search import get_searcher


def test_the_searches_images_score_what_the_evaluator_recorded():
    exp = build_experiment("digits-demo", {"proxy_images": 150})
    best = get_searcher("random")(exp.evaluator, Budget.parse("0.5flops"), evals=4, seed=0).search().best
    whole = build_experiment("digits-demo")
    [row] = rescore(whole, [{"method": "random", "seed": 0, "kept": best.kept, "proxy_acc": best.proxy_acc}])
    assert len(row["hits"]) == 359
    assert row["hits"][:150].float().mean().item() == pytest.approx(best.proxy_acc)  # the same 150 images
    assert row["report_acc"] == pytest.approx(whole.accuracy(whole.evaluator.build(best.policy), "report"))


def test_summary_gives_the_selection_gap_and_rank_correlations():
    def row(method: str, seen: list[int], rest: list[int], report: float) -> dict:
        return {"method": method, "seed": 0, "proxy_acc": 0.0, "report_acc": report,
                "hits": torch.tensor(seen + rest, dtype=torch.bool)}

    rows = [row("a", [1, 1, 1, 1], [1, 0, 0, 0], 0.2), row("a", [1, 1, 1, 0], [1, 1, 0, 0], 0.5),
            row("b", [1, 0, 0, 0], [1, 1, 1, 0], 0.7)]
    methods, rho = summarize(rows, seen=4)
    a, b = methods
    assert (a["method"], a["seeds"], b["seeds"]) == ("a", 2, 1)
    assert a["gap"] == pytest.approx([0.75, 0.25]) and b["gap"] == pytest.approx([-0.5])
    assert a["all"] == pytest.approx([5 / 8, 5 / 8])
    assert rho["rest"] == pytest.approx(1.0) and rho["seen"] == pytest.approx(-1.0)


def test_study_end_to_end_on_a_quick_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bench = tmp_path / "bench"
    assert cli_main(["bench", "--quick", "--quiet", "--methods", "uniform,random", "--budgets", "0.5",
                     "--proxy-images", "150", "--out", str(bench)]) == 0
    cells = str(bench / "cells" / "digits-demo")
    assert main(["--cells", cells, "--evals", "7"]) == 2 and "no finished cells" in capsys.readouterr().err
    assert main(["--cells", cells, "--evals", "6", "--out", str(tmp_path / "new")]) == 0
    text = (tmp_path / "new" / "digits-demo-0.5flops-proxy-sample.md").read_text()
    assert "| uniform | 1 |" in text and "| random | 1 |" in text and "unseen 209" in text
    assert (tmp_path / "new" / "digits-demo-0.5flops-proxy-sample.png").read_bytes().startswith(b"\x89PNG")
    assert main(["--cells", str(tmp_path / "nothing")]) == 2
    assert "bench.json" in capsys.readouterr().err
