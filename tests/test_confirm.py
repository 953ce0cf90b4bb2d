"""The final choice of a search among its best candidates, on proxy-split images it never saw (autoprune.run.confirm)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from autoprune.cli import main
from autoprune.core.policy import PolicyRecord
from autoprune.core.proxy import Proxy, predict, recalibrate_batchnorm
from autoprune.experiment import build_experiment
from autoprune.run.confirm import Confirmation, best_first

PROXY_IMAGES = 120  # of the digits demo's 359 proxy-split images: 239 are left unseen


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One search with the default final choice and one with ``--confirm 0``, on the same candidates."""
    root = tmp_path_factory.mktemp("confirm")
    common = ["search", "--budget", "0.5flops", "--evals", "30", "--racing", "off", "--quiet",
              "--proxy-images", str(PROXY_IMAGES)]
    out = {"confirmed": root / "confirmed", "proxy": root / "proxy"}
    assert main([*common, "--out", str(out["confirmed"])]) == 0
    assert main([*common, "--confirm", "0", "--out", str(out["proxy"])]) == 0
    return out


def test_chosen_is_the_most_accurate_on_unseen_images_ties_going_to_the_better_proxy_rank():
    assert Confirmation((0.5, 0.7, 0.7, 0.6), 100).chosen == 1
    assert Confirmation((0.8, 0.8), 100).chosen == 0
    assert Confirmation((0.5, 0.9), 100).record() == {"candidates": 2, "images": 100, "proxy_rank": 2,
                                                       "accuracy": 0.9, "accuracies": [0.5, 0.9]}


def test_best_first_keeps_one_entry_per_layout_best_accuracy_first_earliest_on_ties():
    scored = [("a", 0.5, {"u": 2, "v": 4}), ("b", 0.7, {"u": 1, "v": 4}), ("c", 0.7, {"v": 4, "u": 2}),
              ("d", 0.6, {"u": 2, "v": 4}), ("e", 0.7, {"u": 1, "v": 4})]
    ranked = best_first(scored, lambda s: s[1], lambda s: s[2])
    assert [name for name, _, _ in ranked] == ["b", "c"]  # c's layout is a's and d's, keys in another order


def test_unseen_images_are_the_proxy_splits_images_after_the_proxys_own():
    exp = build_experiment("digits-demo", {"proxy_images": PROXY_IMAGES})
    whole = exp.split("proxy")
    assert len(exp.evaluator.proxy) == PROXY_IMAGES and len(exp.unseen) == len(whole) - PROXY_IMAGES == 239
    images, _ = exp.unseen.batch(slice(None), "cpu")
    assert torch.equal(images, whole.batch(slice(PROXY_IMAGES, None), "cpu")[0])
    assert not len(build_experiment("digits-demo").unseen)  # the preset's proxy takes the whole split


def test_final_choice_is_the_top_candidate_most_accurate_on_the_unseen_images(runs):
    record = PolicyRecord.load(runs["confirmed"] / "policy.json")
    confirmation = record.found_by["confirmation"]
    trials = pd.read_csv(runs["confirmed"] / "trials.csv")
    exp = build_experiment("digits-demo", {"proxy_images": PROXY_IMAGES})
    names = list(exp.space.names)
    feasible = trials[(trials["status"] == "ok") & (trials["flops"] <= 0.5 * exp.evaluator.cost.dense_flops)]
    top = (feasible.sort_values("proxy_acc", ascending=False, kind="stable")
           .drop_duplicates([f"kept:{n}" for n in names]).head(10))
    assert confirmation["candidates"] == len(top) >= 2 and confirmation["images"] == 239
    kept = [{n: int(row[f"kept:{n}"]) for n in names} for _, row in top.iterrows()]
    images, labels = exp.unseen.batch(slice(None), "cpu")
    accuracies = []
    for k in kept:  # plain forward, labels: independent of the proxy's fast path
        network = exp.evaluator.build(exp.space.policy_from_kept(k))
        recalibrate_batchnorm(network, exp.evaluator.proxy.calibration)
        accuracies.append((predict(network, images, 128) == labels).float().mean().item())
    assert confirmation["accuracies"] == pytest.approx(accuracies, abs=1.5 / 239)  # independently (plain forward)
    chosen = confirmation["proxy_rank"] - 1
    assert accuracies[chosen] == max(accuracies) and accuracies.index(max(accuracies)) == chosen
    assert {n: c["kept"] for n, c in record.channels.items()} == kept[chosen]
    assert record.metrics["proxy_acc"] == pytest.approx(float(top.iloc[chosen]["proxy_acc"]))
    assert f"kept the one ranked {chosen + 1} by proxy accuracy" in (runs["confirmed"] / "summary.md").read_text()


def test_confirm_zero_keeps_the_best_proxy_accuracy(runs):
    record = PolicyRecord.load(runs["proxy"] / "policy.json")
    trials = pd.read_csv(runs["proxy"] / "trials.csv")
    assert record.found_by["confirmation"] is None
    assert record.metrics["proxy_acc"] == pytest.approx(trials[trials["status"] == "ok"]["proxy_acc"].max())
    assert "- final choice: the best proxy accuracy" in (runs["proxy"] / "summary.md").read_text()


def test_negative_confirm_is_one_line_and_writes_nothing(cli, tmp_path):
    code, _, err = cli("search", "--budget", "0.5flops", "--confirm", "-1", "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.splitlines()) == 1 and "--confirm and --confirm-images must be >= 0" in err
    assert not (tmp_path / "r").exists()


def test_bench_cells_made_before_the_final_choice_name_the_option_that_resumes_them(cli, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--methods", "uniform,random", "--budgets", "0.5", "--no-latency", "--quiet",
                 "--proxy-images", str(PROXY_IMAGES), "--out", str(out)]) == 0
    cells = out / "cells" / "digits-demo"
    cell = pd.read_json(next(cells.rglob("random-*.json")), typ="series")
    assert cell["confirmation"]["images"] == 239
    old = tmp_path / "old"
    shutil.copytree(out, old)
    bench_json = old / "cells" / "digits-demo" / "bench.json"
    saved = json.loads(bench_json.read_text())
    del saved["confirm"]  # as bench.json was written before the final choice
    bench_json.write_text(json.dumps(saved))
    code, _, err = cli("bench", "--quick", "--methods", "uniform,random", "--budgets", "0.5", "--no-latency", "--quiet",
                       "--proxy-images", str(PROXY_IMAGES), "--out", str(old), "--report-only")
    assert code == 2 and len(err.splitlines()) == 1 and "(--confirm 0 for these cells)" in err


def test_a_label_free_proxy_scores_the_unseen_images_by_agreement_with_the_dense_network():
    exp = build_experiment("digits-demo", {"proxy_images": PROXY_IMAGES})
    agreement = Proxy(exp.split("calibration"), exp.split("proxy"), kind="agreement", calibration_batches=2)
    unseen = agreement.on(exp.unseen)
    unseen.use_reference(copy.deepcopy(exp.model))
    assert len(unseen) == 239 and unseen.kind == "agreement" and len(agreement) == 359  # the original is untouched
    assert torch.equal(unseen.labels, exp.unseen.batch(slice(None), "cpu")[1])
    assert torch.equal(unseen.targets, predict(copy.deepcopy(exp.model).eval(), unseen.images, 128))
    assert unseen.score(copy.deepcopy(exp.model), recalibrate=False).accuracy == 1.0
