"""The fine-tuning study and the proxy-fidelity study on the digits demo: cells saved, resumed without rerunning
finished ones, refused with other settings; rank correlations computed right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from autoprune.bench.finetune_cells import PROXIES, CellRunner, CellSpec
from autoprune.bench.studies import finetune, proxy_fidelity
from autoprune.bench.studies.proxy_fidelity import pick_policies, rank_correlations
from autoprune.experiment import build_experiment
from autoprune.finetune.trainer import Finetuner, FinetuneSettings
from autoprune.presets import load_env

TINY = ["--env", "digits-demo", "--weights", "builtin", "--budget", "0.5flops", "--evals", "10", "--epochs", "2",
        "--train-images", "200", "--quiet"]


@pytest.fixture(scope="module")
def search_cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Search cells as `autoprune bench` saves them: uniform (one seed), random and CMA-ES (two)."""
    folder = tmp_path_factory.mktemp("search") / "cells"
    (folder / "0.5flops").mkdir(parents=True)
    space = build_experiment("digits-demo").space
    channels = {u.name: u.channels for u in space.units}
    policies = {"uniform-e10-s0": 0.5, "random-e10-s0": 0.4, "random-e10-s1": 0.6, "optuna-cmaes-e10-s0": 0.45,
                "optuna-cmaes-e10-s1": 0.55}
    for name, keep in policies.items():
        kept = {u: max(1, round(keep * c)) for u, c in channels.items()}
        (folder / "0.5flops" / f"{name}.json").write_text(json.dumps(
            {"method": name.rpartition("-e10")[0], "kept": kept, "channels": channels, "proxy_acc": keep, "report_acc": keep}))
    return folder


def test_finetune_study_saves_every_cell_and_resumes_only_the_missing_one(search_cells, tmp_path, capsys):
    cells, out = tmp_path / "ft", tmp_path / "out"
    argv = [*TINY, "--methods", "uniform,random,optuna-cmaes", "--seeds", "2", "--search-cells", str(search_cells),
            "--cells", str(cells), "--out", str(out)]
    assert finetune.main(argv) == 0
    saved = sorted(p.name for p in cells.glob("*.json") if p.name != "study.json")
    assert saved == sorted(f"{m}-{loss}-s{s}.json" for m in ("dense", "uniform", "random", "optuna-cmaes") for loss in ("ce", "kd")
                           for s in (0, 1))
    records = {p.stem: json.loads(p.read_text()) for p in cells.glob("*-s*.json")}
    for name, r in records.items():
        assert len(r["epochs"]) == 2 and [e["epoch"] for e in r["epochs"]] == [1, 2]
        assert 0 <= r["before_report_acc"] <= 1 and r["report_acc"] == r["epochs"][-1]["report_acc"]
        assert r["distill"] == name.endswith(("kd-s0", "kd-s1")) and r["settings"]["seed"] == r["seed"]
        assert r["settings"]["train_images"] == 200 and r["settings"]["epochs"] == 2
    # the dense control keeps every channel; uniform is one policy for both seeds, random one per seed
    assert records["dense-ce-s0"]["flops"] == records["dense-ce-s0"]["dense_flops"]
    assert records["uniform-ce-s0"]["kept"] == records["uniform-kd-s1"]["kept"]
    assert records["random-ce-s0"]["kept"] != records["random-ce-s1"]["kept"]
    assert records["random-ce-s1"]["source"] == "random-e10-s1.json"
    assert records["uniform-ce-s0"]["flops"] < 0.6 * records["uniform-ce-s0"]["dense_flops"]
    # the first distillation cell of a seed computes the teacher's logits (2 epochs x 2 batches), the others read them
    for seed in (0, 1):
        read = sorted(r["teacher_batches_read"] for n, r in records.items() if n.endswith(f"kd-s{seed}"))
        assert read == [0, 4, 4, 4]
    assert "teacher_batches_read" not in records["uniform-ce-s0"]
    report = (out / "digits-demo-finetune.md").read_text()
    assert "| uniform |" in report and "| dense |" in report and "| optuna-cmaes | " in report
    assert "**Answer (with cross-entropy):** the best searched policy after fine-tuning, optuna-cmaes," in report
    assert (out / "digits-demo-finetune-curves.png").stat().st_size > 10_000
    assert "nan" not in report
    one_seed = [*argv[:argv.index("--seeds")], "--seeds", "1", *argv[argv.index("--seeds") + 2:]]
    assert finetune.main([*one_seed, "--report-only"]) == 0
    assert "p = n/a: fewer than two seeds or no spread" in (out / "digits-demo-finetune.md").read_text()
    (cells / "findings.md").write_text("Uniform holds up after two epochs.\n")
    assert finetune.main([*argv, "--report-only"]) == 0
    assert (out / "digits-demo-finetune.md").read_text().rstrip().endswith(
        "_Written by hand in `../ft/findings.md` from the cells above; a rewrite of this report keeps it._\n\n"
        "Uniform holds up after two epochs.")

    (cells / "random-kd-s1.json").unlink()
    before = {p.name: p.read_text() for p in cells.glob("*.json")}
    assert finetune.main(argv) == 0
    after = {p.name: p.read_text() for p in cells.glob("*.json")}
    assert after.keys() == before.keys() | {"random-kd-s1.json"}
    assert all(after[n] == before[n] for n in before)  # finished cells were not run again
    assert json.loads(after["random-kd-s1.json"])["report_acc"] > 0
    assert json.loads(after["random-kd-s1.json"])["teacher_batches_read"] == 4
    assert "6 of 8 cells read some back" in (out / "digits-demo-finetune.md").read_text()

    capsys.readouterr()
    assert finetune.main([*argv, "--lr", "0.05"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune: error: the cells in") and "lr" in err and "\n" not in err


def test_the_answer_names_the_best_method_among_those_with_every_seed():
    accs = {"a": [0.80, 0.82, 0.81], "b": [0.83], "c": [0.79, 0.80, 0.78], "uniform": [0.70, 0.71, 0.72]}

    def values(method, kd, key):
        return accs.get(method, [])

    best, ahead = finetune.best_searched(["a", "b", "c"], False, values)
    assert best == "a" and ahead == ["b"]
    text = finetune.answer(best, False, values, ahead)
    assert text.startswith("**Answer (with cross-entropy):** the best searched policy after fine-tuning among the "
                           "methods with 3 seeds, a, beats uniform by +10.00 points (p = ")
    assert "b reads 83.00% on 1 seed(s), not yet comparable" in text


def test_finetune_study_names_missing_search_cells(search_cells, tmp_path, capsys):
    code = finetune.main([*TINY, "--methods", "uniform,evolution", "--search-cells", str(search_cells),
                          "--cells", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no search cell evolution-e10-s0.json, evolution-e10-s1.json" in err
    assert "\n" not in err and not (tmp_path / "o").exists()


def test_rank_correlations_against_scipy():
    rng = np.random.default_rng(3)
    after = rng.uniform(0.5, 0.9, 12)
    noisy = after + rng.normal(0, 0.05, 12)
    records = [{"report_acc": a, "proxy_acc": a, "proxy_acc_250": n, "agreement": -a, "reconstruct_acc": 0.5 + 0.01 * i}
               for i, (a, n) in enumerate(zip(after, noisy))]
    table = rank_correlations(records).set_index("proxy")
    assert table.loc["proxy_acc", "rho"] == pytest.approx(1.0) and table.loc["agreement", "rho"] == pytest.approx(-1.0)
    assert table.loc["proxy_acc_250", "rho"] == pytest.approx(stats.spearmanr(noisy, after)[0])
    assert table.loc["reconstruct_acc", "rho"] == pytest.approx(stats.spearmanr(range(12), after)[0])
    assert (table["low"] <= table["rho"] + 1e-9).all() and (table["rho"] <= table["high"] + 1e-9).all()
    # the best proxy (rho 1) leads the reversed one (rho -1) by 2 in every resample, the noisy one by less
    assert table.loc["agreement", "lead_low"] == pytest.approx(2.0) and table.loc["proxy_acc", "lead_high"] == 0
    assert 0 <= table.loc["proxy_acc_250", "lead_low"] <= table.loc["proxy_acc_250", "lead_high"] <= 2
    assert proxy_fidelity.answer(table.reset_index(), 2, 12).startswith(
        "**Answer:** accuracy, 1,000 proxy images (the search's) ranks policies best (Spearman 1.000")


def test_seeds_merge_into_one_record_per_policy_and_correlate_per_seed():
    records = [{"trial": t, "seed": s, "report_acc": acc, **{p: proxy for p in PROXIES}}
               for t, proxy, accs in ((1, 0.2, (0.60, 0.64)), (2, 0.4, (0.70, 0.66)), (3, 0.6, (0.80, 0.62)))
               for s, acc in enumerate(accs)]
    merged = {r["trial"]: r for r in proxy_fidelity.merge_seeds(records)}
    assert merged[1]["report_acc"] == pytest.approx(0.62) and merged[3]["seed_accs"] == [0.80, 0.62]
    assert merged[2]["proxy_acc"] == 0.4
    per_seed = proxy_fidelity.per_seed_correlations(records)
    assert per_seed["proxy_acc"] == pytest.approx([1.0, -0.5])  # seed 1: 0.64, 0.66, 0.62 against 0.2, 0.4, 0.6


def test_picked_policies_span_the_proxy_range():
    trials = pd.DataFrame({"trial": range(10), "status": ["ok"] * 9 + ["fail"], "within_budget": [True] * 8 + [False] * 2,
                           "proxy_acc": [0.3, 0.9, 0.5, 0.1, 0.7, 0.2, 0.8, 0.4, 0.95, 0.99],
                           "kept:a": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]})
    picked = pick_policies(trials, 3)
    assert picked["proxy_acc"].tolist() == [0.1, 0.5, 0.9]  # worst, middle (rank 3.5 rounds to 4), best of eight


def test_proxy_fidelity_study_on_a_small_search(cli, tmp_path):
    assert cli("search", "--env", "digits-demo", "--budget", "0.5flops", "--method", "random", "--evals", "12",
               "--racing", "off", "--out", "run", "--quiet")[0] == 0
    cells, out = tmp_path / "fid", tmp_path / "out"
    argv = ["--env", "digits-demo", "--weights", "builtin", "--run", str(tmp_path / "run"), "--policies", "4",
            "--epochs", "1", "--train-images", "200", "--seeds", "2", "--cells", str(cells), "--out", str(out), "--quiet"]
    assert proxy_fidelity.main(argv) == 0
    records = [json.loads(p.read_text()) for p in sorted(cells.glob("trial-*.json"))]
    assert len(records) == 8 and sorted({r["seed"] for r in records}) == [0, 1]
    for r in records:
        assert all(0 <= r[p] <= 1 for p in PROXIES)
        assert r["proxy_acc"] == pytest.approx(r["search_proxy_acc"], abs=1e-6)  # the search's own score, again
    for seed0 in (r for r in records if r["seed"] == 0):
        seed1 = next(r for r in records if r["seed"] == 1 and r["trial"] == seed0["trial"])
        assert all(seed1[p] == seed0[p] for p in PROXIES)  # measured before fine-tuning: the seed does not matter
        assert seed1["settings"]["seed"] == 1 and seed0["settings"]["seed"] == 0
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    eligible = trials[(trials["status"] == "ok") & trials["within_budget"]]["proxy_acc"]
    assert min(r["proxy_acc"] for r in records) == pytest.approx(eligible.min())  # the range is spanned
    assert max(r["proxy_acc"] for r in records) == pytest.approx(eligible.max())
    report = (out / "digits-demo-proxy-fidelity.md").read_text()
    assert "Spearman rho" in report and "**Answer:**" in report
    assert (out / "digits-demo-proxy-fidelity.png").is_file()


def test_a_cell_interrupted_mid_training_resumes_to_the_same_record(tmp_path, monkeypatch):
    runner = CellRunner(load_env("digits-demo"))
    kept = {u.name: u.channels // 2 for u in runner.exp.space.units}
    spec = CellSpec("c", kept, FinetuneSettings(epochs=3, train_images=300, seed=1), {"method": "m"})
    whole = runner.run(spec)
    checkpoint = tmp_path / "c.ckpt.pt"
    train_epoch = Finetuner.train_epoch
    calls = []

    def dies_in_the_third_epoch(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return train_epoch(self)

    monkeypatch.setattr(Finetuner, "train_epoch", dies_in_the_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        runner.run(spec, checkpoint)
    assert checkpoint.is_file()
    monkeypatch.setattr(Finetuner, "train_epoch", train_epoch)
    resumed = runner.run(spec, checkpoint)
    assert [e["report_acc"] for e in resumed["epochs"]] == [e["report_acc"] for e in whole["epochs"]]
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in whole["epochs"]]
    assert resumed["test_acc"] == whole["test_acc"] and resumed["before_report_acc"] == whole["before_report_acc"]


def test_proxy_fidelity_refuses_zero_seeds_in_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trials.csv").write_text("trial,status\n")
    code = proxy_fidelity.main(["--env", "digits-demo", "--weights", "builtin", "--run", str(tmp_path / "run"),
                                "--seeds", "0", "--cells", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "autoprune: error: --seeds must be >= 1, got 0"
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()
