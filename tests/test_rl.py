"""AMC search with stable-baselines3 agents: AMC's training details, the CLI run, resume, bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from autoprune.core.budget import Budget
from autoprune.core.cost import fvcore_flops
from autoprune.core.evaluator import Evaluator
from autoprune.core.policy import PolicyRecord
from autoprune.errors import ConfigError
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.search import get_searcher


@pytest.fixture(scope="module")
def digits() -> Experiment:
    return Experiment.from_config(load_env("digits-demo"))


def test_short_ddpg_search_trains_as_amc_does(digits):
    digits.evaluator.observers.clear()
    searcher = get_searcher("ddpg")(digits.evaluator, Budget.parse("0.5flops"), evals=8, seed=0, warmup=3)
    result = searcher.search()
    steps = len(digits.space)
    assert result.evaluations == 8 and all(c.meta["method"] == "ddpg" and c.meta["within_budget"] for c in result.candidates)
    assert result.best is not None and result.best.proxy_acc == max(c.proxy_acc for c in result.candidates)
    agent = searcher.agent
    assert agent.num_timesteps == 8 * steps and agent.gamma == 1.0 and agent.tau == 0.01 and agent.batch_size == 64
    assert agent.learning_starts == 3 * steps and agent.replay_buffer.buffer_size == 100 * steps
    assert [g["lr"] for g in agent.actor.optimizer.param_groups] == [1e-4]
    assert [g["lr"] for g in agent.critic.optimizer.param_groups] == [1e-3]
    assert [m.out_features for m in agent.actor.mu if isinstance(m, torch.nn.Linear)] == [300, 300, 1]
    assert agent.replay_buffer.baseline is not None  # rewards were centred while training
    # the noise is off during the warm-up, then 0.5 decaying by 0.95 per episode
    assert agent.action_noise.steps == 8 * steps  # drawn once per step
    agent.action_noise.steps = 5 * steps
    assert agent.action_noise.scale == pytest.approx(0.5 * 0.95**2)


def test_replay_buffer_centres_terminal_rewards():
    import gymnasium

    from autoprune.search.rl.agents import CenteredReplayBuffer

    box = gymnasium.spaces.Box(0.0, 1.0, (2,), np.float32)
    buffer = CenteredReplayBuffer(20, box, gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32), device="cpu")
    obs, action = np.zeros((1, 2), np.float32), np.zeros((1, 1), np.float32)
    for episode_reward in (0.2, 0.6):
        for step in range(3):
            done = step == 2
            buffer.add(obs, obs, action, np.array([episode_reward if done else 0.0]), np.array([done]), [{}])
    np.random.seed(0)
    batch = buffer.sample(64)
    terminal = batch.dones.flatten() > 0.5
    assert 0.2 < buffer.baseline < 0.6
    assert torch.all(batch.rewards.flatten()[~terminal] == 0)  # non-terminal rewards untouched
    centred = sorted({round(float(r), 5) for r in batch.rewards.flatten()[terminal]})
    assert centred == pytest.approx([0.2 - buffer.baseline, 0.6 - buffer.baseline], abs=1e-5)



@pytest.mark.parametrize("args, message", [
    (["--method", "a2c"], "ddpg, td3, sac, ppo"),
    (["--method", "ddpg", "--episodes", "5"], "--episodes 5 is fewer than the warm-up of 100 episodes"),
    (["--method", "td3", "--episodes", "5", "--warmup", "6"], "--episodes 5 is fewer than the warm-up of 6"),
    (["--method", "sac", "--episodes", "5", "--warmup", "1", "--noise-sigma", "0.3"], "--noise-sigma applies to --method ddpg, td3, not --method sac"),
    (["--method", "random", "--warmup", "1"], "--warmup applies to --method ddpg, td3, sac, not --method random"),
    (["--method", "ddpg", "--episodes", "5", "--warmup", "1", "--noise-decay", "1.5"], "--noise-decay must be in (0, 1], got 1.5"),
    (["--method", "ddpg", "--episodes", "5", "--warmup", "-1"], "--warmup must be >= 0"),
    (["--method", "ppo", "--lr-actor", "0"], "--lr-actor must be > 0, got 0.0"),
    (["--method", "ddpg", "--episodes", "5", "--warmup", "1", "--reward", "acc-latency"], "--latency"),
    (["--method", "ppo", "--budget", "0.7latency"], "cannot take the latency budget 0.7latency"),
    (["--resume", "no-such-run"], "'no-such-run' is not a search run directory"),
])
def test_bad_rl_input_is_one_line(fails, args, message):
    argv = ["search", *args] if "--budget" in args or "--resume" in args else ["search", "--budget", "0.5flops", *args]
    assert message in fails(*argv)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_is_one_line(fails):
    assert "pip install tensorboard" in fails("search", "--budget", "0.5flops", "--method", "ddpg", "--episodes", "3",
                                              "--warmup", "1", "--tensorboard", "tb")


def test_cli_ddpg_search_records_every_episode_and_meets_the_budget(cli, tmp_path, digits):
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "ddpg", "--episodes", "6", "--warmup", "2",
                       "--out", "run", "--quiet")
    assert code == 0, err
    run = tmp_path / "run"
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 6 and (trials["method"] == "ddpg").all() and trials["within_budget"].all()
    assert (run / "agent.zip").is_file() and (run / "replay_buffer.pkl").is_file()
    record = PolicyRecord.load(run / "policy.json")
    network = digits.evaluator.pruner.prune({n: c["kept"] for n, c in record.channels.items()})
    dense = fvcore_flops(digits.model, digits.example_inputs)
    assert record.metrics["flops"] == fvcore_flops(network, digits.example_inputs) <= 0.5 * dense
    assert record.found_by["method"] == "ddpg" and record.found_by["evaluations"] == 6


def test_resume_continues_from_the_saved_agent(cli, tmp_path, monkeypatch):
    from autoprune.search.rl.agents import AMCDDPG

    evaluate = Evaluator.evaluate
    calls = {"n": 0}

    def interrupted_at_the_fourth(self, policy, meta=None, **options):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return evaluate(self, policy, meta, **options)

    monkeypatch.setattr(Evaluator, "evaluate", interrupted_at_the_fourth)
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "ddpg", "--episodes", "6", "--warmup", "2",
                       "--save-every", "1", "--out", "run", "--quiet")
    assert code == 130, err
    run = tmp_path / "run"
    first = pd.read_csv(run / "trials.csv")
    steps = len([c for c in first.columns if c.startswith("kept:")])
    assert len(first) == 3 and AMCDDPG.load(run / "agent.zip").num_timesteps == 3 * steps

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    code, _, err = cli("search", "--resume", str(run), "--quiet")
    assert code == 0, err
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 6 and trials["trial"].tolist() == list(range(6))
    pd.testing.assert_frame_equal(trials.iloc[:3], first)  # appended, not rewritten
    assert AMCDDPG.load(run / "agent.zip").num_timesteps == 6 * steps  # the loaded agent went on learning
    assert PolicyRecord.load(run / "policy.json").found_by["evaluations"] == 6

    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["settings"]["latency_model"]  # as written by an autoprune from before that setting existed
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = cli("search", "--resume", str(run), "--quiet")  # a finished run: nothing more to do
    assert code == 0 and len(pd.read_csv(run / "trials.csv")) == 6, err


def test_unknown_option_for_searcher_is_config_error(digits):
    with pytest.raises(ConfigError, match="--warmup does not apply to --method ppo"):
        get_searcher("ppo")(digits.evaluator, Budget.parse("0.5flops"), evals=4, warmup=1)
