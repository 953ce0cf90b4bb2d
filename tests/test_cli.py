"""The README's main command end to end on the offline digits demo, then evaluate and apply."""

import json
import re

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


def test_main_command_says_what_it_does_on_stderr(cli, tmp_path, monkeypatch):
    """Cold cache: a line per stage from the first, then one plain progress line (stderr is no terminal here)."""
    from autoprune.zoo import digits

    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(digits, "_train", lambda train: digits.DigitsCNN().eval())  # the stage, not its 20 s
    code, out, err = cli("search", "--budget", "0.5flops", "--evals", "3", "--out", "run")
    assert code == 0, err
    lines = err.splitlines()
    assert lines[:4] == [
        "loading env digits-demo (digits-cnn) ...",
        f"training the digits demo network once (10-20 s on one CPU thread; cached in {tmp_path / 'cache' / 'weights'}) ...",
        "building the search space ...",
        "loading the digits data ...",
    ]
    assert re.fullmatch(r"random: 3/3 evals, best \d+\.\d\d% at 0\.\d{3} FLOPs, \d+ s", lines[4]), lines[4]
    assert lines[5:] == ["scoring the best policy and the dense network on the test split, writing run ..."]
    assert "\r" not in err and "3 evaluations recorded" in out

    code, out, err = cli("search", "--budget", "0.5flops", "--evals", "1", "--out", "quiet", "--quiet")
    assert code == 0 and err == ""
    assert "1 evaluation recorded in" in out  # not "1 evaluations"


def test_progress_on_a_log_file_is_plain_lines(cli, monkeypatch):
    """stderr captured (not a terminal): no carriage returns, a line with the counts at each interval."""
    monkeypatch.setattr("autoprune.console.PLAIN_EVERY_S", 0.0)
    code, _, err = cli("search", "--budget", "0.5flops", "--evals", "3", "--out", "run")
    assert code == 0, err
    assert "\r" not in err
    progress = [line for line in err.splitlines() if line.startswith("random: ")]
    assert [line.split(",")[0] for line in progress] == ["random: 1/3 evals", "random: 2/3 evals", "random: 3/3 evals"]
    assert all(re.search(r", best \d+\.\d\d% at 0\.\d{3} FLOPs, \d+ s$", line) for line in progress), progress
