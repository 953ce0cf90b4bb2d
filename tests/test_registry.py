"""A searcher defined here, registered with ``register_searcher``, runs through the command line and the
benchmark like a built-in one: its option is offered and checked, its candidates are records."""

from __future__ import annotations

import json
from collections.abc import Iterator

import optuna
import pandas as pd
import pytest

from autoprune import Budget, Policy, Searcher, build_experiment, register_searcher
from autoprune.bench.harness import benchmark
from autoprune.bench.settings import BenchSettings
from autoprune.errors import ConfigError
from autoprune.presets import load_env
from autoprune.search import SEARCHERS, SearchOption, get_searcher
from autoprune.trials.study import open_storage


class LuckySearcher(Searcher):
    """Samples every unit's ratio in ``[0, spread]`` and projects the sample onto the budget."""

    name = "lucky"
    summary = "a test's toy: uniform samples up to a spread"
    options = (SearchOption("spread", "largest sampled ratio (default 0.9)", float, metavar="S"),)

    def __init__(self, evaluator, budget: Budget, evals: int = 100, seed: int = 0, *, spread: float = 0.9) -> None:
        if not 0.0 < spread <= 1.0:
            raise ConfigError(f"--spread must be in (0, 1], got {spread}")
        super().__init__(evaluator, budget, evals, seed)
        self.spread = spread

    def _ask(self) -> Policy:
        return self.project({n: float(self.rng.uniform(0.0, self.spread)) for n in self.space.names})


@pytest.fixture
def lucky() -> Iterator[type[Searcher]]:
    register_searcher(LuckySearcher)
    yield LuckySearcher
    del SEARCHERS[LuckySearcher.name]


def test_registry_names_the_class_and_rejects_impostors(lucky):
    assert get_searcher("lucky") is LuckySearcher
    assert register_searcher(LuckySearcher) is LuckySearcher  # registering the same class again is harmless
    impostor = type("Impostor", (LuckySearcher,), {})
    with pytest.raises(ConfigError, match="already registered by LuckySearcher"):
        register_searcher(impostor)
    with pytest.raises(ConfigError, match="Searcher subclass"):
        register_searcher(dict)  # type: ignore[arg-type]


def test_toy_searcher_runs_from_the_command_line(lucky, cli, tmp_path):
    code, out, err = cli("search", "--budget", "0.5flops", "--method", "lucky", "--spread", "0.7", "--evals", "5",
                         "--out", "run", "--quiet")
    assert code == 0, err
    run = tmp_path / "run"
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 5 and (trials["method"] == "lucky").all() and trials["within_budget"].all()
    study = optuna.load_study(study_name="digits-demo-0.5flops-lucky", storage=open_storage(None, run))
    assert [t.user_attrs["method"] for t in study.trials] == ["lucky"] * 5
    assert [t.user_attrs["flops"] for t in study.trials] == trials["flops"].tolist()
    record = json.loads((run / "policy.json").read_text())
    dense = build_experiment("digits-demo").evaluator.cost.dense_flops
    assert record["found_by"]["method"] == "lucky" and record["metrics"]["flops"] <= 0.5 * dense
    assert "lucky" in out


def test_toy_searcher_option_is_checked_against_the_method(lucky, fails):
    assert "--spread applies to --method lucky, not --method random" in fails(
        "search", "--budget", "0.5flops", "--method", "random", "--spread", "0.5")
    assert "--spread must be in (0, 1], got 1.5" in fails(
        "search", "--budget", "0.5flops", "--method", "lucky", "--spread", "1.5")


def test_toy_searcher_runs_in_the_benchmark(lucky, tmp_path):
    settings = BenchSettings(env=load_env("digits-demo").to_dict(), budgets=("0.5flops",), methods=("uniform", "lucky"),
                             seeds=1, evals=4, latency=False, out=str(tmp_path))
    files, finished = benchmark(settings, progress=False, command=["autoprune", "bench"])
    assert finished == 2
    cell = json.loads(settings.cell_path("0.5flops", "lucky", 0).read_text())
    assert cell["method"] == "lucky" and cell["evals"] == 4
    assert cell["flops"] <= 0.5 * cell["dense_flops"]
    report = files[0].read_text()
    assert "| lucky − uniform (points) |" in report
