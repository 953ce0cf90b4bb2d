"""The README's main command end to end on the offline digits demo, then evaluate and apply."""

import json

import pandas as pd
import torch

from autoprune.core.cost import fvcore_flops
from autoprune.core.policy import PolicyRecord


def test_main_command_then_evaluate_and_apply(cli, tmp_path):
    code, out, err = cli("search", "--budget", "0.5flops", "--evals", "12", "--quiet")
    assert code == 0, err
    (run,) = (tmp_path / "results" / "runs").iterdir()
    assert {p.name for p in run.iterdir()} == {"config.yaml", "policy.json", "trials.csv", "study.db", "summary.md", "trials.png", "policy.png"}
    record = PolicyRecord.load(run / "policy.json")
    assert record.found_by["method"] == "random" and record.found_by["evaluations"] == 12
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 12
    assert "FLOPs (MACs" in (run / "summary.md").read_text()
    assert "best policy" in out

    code, out, err = cli("apply", str(run), "--out", str(tmp_path / "pruned.pt"))  # a run directory names its policy
    assert code == 0, err
    pruned = torch.load(tmp_path / "pruned.pt", weights_only=False)
    x = torch.zeros(record.input_shape)
    assert pruned(x).shape == (1, 10)
    assert fvcore_flops(pruned, x) == record.metrics["flops"]
    summary = (run / "summary.md").read_text()
    dense = float(summary.split("| FLOPs (MACs, fvcore) | ")[1].split("M")[0]) * 1e6
    assert 0.97 * 0.5 * dense <= record.metrics["flops"] <= 0.5 * dense

    code, out, err = cli("evaluate", "--policy", str(run), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["flops"] == record.metrics["flops"] and result["bn_recalibrated"] is True
    assert abs(result["accuracy"] - record.metrics["report_acc"]) < 1e-6


def test_uniform_and_list(cli, tmp_path):
    code, out, err = cli("search", "--budget", "0.6params", "--method", "uniform", "--out", str(tmp_path / "u"), "--quiet")
    assert code == 0, err
    record = PolicyRecord.load(tmp_path / "u" / "policy.json")
    kept_fractions = [c["kept"] / c["dense"] for c in record.channels.values()]
    assert max(kept_fractions) - min(kept_fractions) < 0.07  # one ratio, up to channel rounding
    code, out, _ = cli("list")
    assert code == 0 and "resnet56-cifar10" in out and "uniform" in out
