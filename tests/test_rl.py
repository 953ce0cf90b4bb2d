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
    from autoprune.search.rl.searcher import AMC_SETTINGS

    digits.evaluator.observers.clear()
    searcher = get_searcher("ddpg")(digits.evaluator, Budget.parse("0.5flops"), evals=8, seed=0, warmup=3,
                                    **AMC_SETTINGS)
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
    assert searcher.env.action_mode == "amc" and agent.warmup_env is None and agent.action_noise.floor == 0
    assert searcher.env.on_repeat == "again"  # AMC evaluates a repeated layout again (from the cache)
    # the noise is off during the warm-up, then 0.5 decaying by 0.95 per episode
    assert agent.action_noise.steps == 8 * steps  # drawn once per step
    agent.action_noise.steps = 5 * steps
    assert agent.action_noise.scale == pytest.approx(0.5 * 0.95**2)


def test_sac_takes_more_updates_per_transition_and_its_starting_entropy_coefficient(digits):
    """``updates`` multiplies the gradient steps made after each episode; ``entropy`` is where SAC's tuned entropy
    coefficient starts (sac's defaults: 8 and 0.05; AMC's one step per transition and stable-baselines3's 1.0 on
    request)."""
    digits.evaluator.observers.clear()
    agents = {}
    for options in ({}, {"updates": 1, "entropy": 1.0}):
        searcher = get_searcher("sac")(digits.evaluator, Budget.parse("0.5flops"), evals=6, seed=0, warmup=2, **options)
        searcher.search()
        agents[bool(options)] = searcher.agent
    steps = len(digits.space)
    default, amc = agents[False], agents[True]
    assert default.gradient_steps == 8 * steps and amc.gradient_steps == steps
    assert amc._n_updates > 0 and default._n_updates == 8 * amc._n_updates  # the same episodes trained on
    assert default.ent_coef == "auto_0.05" and amc.ent_coef == "auto_1.0"
    assert float(default.log_ent_coef.detach().exp()) < 0.06 < 0.9 < float(amc.log_ent_coef.detach().exp())
    ddpg = get_searcher("ddpg")(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, warmup=1)
    assert ddpg.settings["updates"] == 1 and "entropy" not in ddpg.settings and "target_entropy" not in ddpg.settings


def test_sac_tunes_its_entropy_coefficient_towards_the_target_entropy(digits):
    """``target_entropy`` is the entropy per step SAC's coefficient is tuned towards (stable-baselines3's -1 for
    one action by default); it is SAC's alone, and must be a finite number."""
    digits.evaluator.observers.clear()
    sac = get_searcher("sac")
    default = sac(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, warmup=3)
    higher = sac(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, warmup=3, target_entropy=0.5)
    default.search()
    higher.search()
    assert default.agent.target_entropy == -1.0 and higher.agent.target_entropy == 0.5
    with pytest.raises(ConfigError, match="--target-entropy does not apply to --method ddpg"):
        get_searcher("ddpg")(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, target_entropy=0.0)
    with pytest.raises(ConfigError, match="--target-entropy must be a finite number"):
        sac(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, target_entropy=float("nan"))


def test_replay_buffer_centres_terminal_rewards():
    import gymnasium

    from autoprune.search.rl.agents import NormalisedReplayBuffer

    box = gymnasium.spaces.Box(0.0, 1.0, (2,), np.float32)
    buffer = NormalisedReplayBuffer(20, box, gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32), device="cpu")
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
    (["--method", "sac", "--episodes", "5", "--warmup", "1", "--updates", "0"], "--updates must be >= 1 (an integer), got 0"),
    (["--method", "ddpg", "--episodes", "5", "--warmup", "1", "--entropy", "0.1"], "--entropy applies to --method sac, not --method ddpg"),
    (["--method", "sac", "--episodes", "5", "--warmup", "1", "--entropy", "-1"], "--entropy must be > 0, got -1.0"),
    (["--method", "ddpg", "--episodes", "5", "--warmup", "1", "--reward", "acc-latency"], "--latency"),
    (["--method", "ppo", "--budget", "0.7latency"], "cannot take the latency budget 0.7latency"),
    (["--method", "sac", "--episodes", "5", "--warmup", "1", "--repeat-penalty", "-0.01"], "--repeat-penalty must be a finite number >= 0, got -0.01"),
    (["--method", "random", "--repeat-penalty", "0.01"], "--repeat-penalty applies to --method"),
    (["--method", "sac", "--episodes", "5", "--warmup", "1", "--on-repeat", "skip"], "--on-repeat"),
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


@pytest.mark.parametrize("norm", ["standard", "rank"])
def test_replay_buffer_standardises_or_ranks_terminal_rewards(norm):
    import gymnasium

    from autoprune.search.rl.agents import NormalisedReplayBuffer

    box = gymnasium.spaces.Box(0.0, 1.0, (2,), np.float32)
    buffer = NormalisedReplayBuffer(40, box, gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32), device="cpu",
                                    reward_norm=norm)
    obs, action = np.zeros((1, 2), np.float32), np.zeros((1, 1), np.float32)
    rewards = [0.20, 0.21, 0.22, 0.25]  # close proxy accuracies, as at a tight budget
    for episode_reward in rewards:
        for step in range(3):
            done = step == 2
            buffer.add(obs, obs, action, np.array([episode_reward if done else 0.0]), np.array([done]), [{}])
    assert sorted(buffer.terminal_rewards().ravel().tolist()) == pytest.approx(rewards)
    seen = buffer.normalise(np.array(rewards))
    if norm == "standard":
        assert seen == pytest.approx((np.array(rewards) - np.mean(rewards)) / np.std(rewards), abs=1e-5)
    else:
        assert seen == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])
    np.random.seed(0)
    batch = buffer.sample(200)  # drawn with replacement from the 12 transitions: every one of them
    terminal = batch.dones.numpy().ravel() > 0.5
    learned = batch.rewards.numpy().ravel()
    assert sorted(set(np.round(learned[terminal], 4))) == pytest.approx(sorted(seen), abs=1e-4)  # spread to ~1, not 0.05
    assert (learned[~terminal] == 0).all()


def test_random_warmup_draws_what_random_search_draws(digits):
    """In project mode a warm-up episode is random search's draw: the same seed proposes the same policies."""
    digits.evaluator.observers.clear()
    budget = Budget.parse("0.5flops")
    agent = get_searcher("ddpg")(digits.evaluator, budget, evals=5, seed=3, warmup=5, action_mode="project",
                                 warmup_draw="random")
    warm = [c.kept for c in agent.search().candidates]
    random = get_searcher("random")(digits.evaluator, budget, evals=5, seed=3)
    assert warm == [c.kept for c in random.search().candidates]
    assert len({tuple(k.values()) for k in warm}) == 5


@pytest.mark.parametrize("mode", ["amc", "relative", "project"])
def test_every_mode_learns_within_the_budget(digits, mode):
    digits.evaluator.observers.clear()
    budget = Budget.parse("0.4flops")
    searcher = get_searcher("td3")(digits.evaluator, budget, evals=6, seed=1, warmup=2, action_mode=mode,
                                   warmup_draw="random", reward_norm="rank", noise_floor=0.2)
    result = searcher.search()
    assert result.evaluations == 6 and all(c.meta["within_budget"] for c in result.candidates)
    assert searcher.agent.action_noise.floor == 0.2 and searcher.agent.replay_buffer.reward_norm == "rank"


def test_by_default_no_episode_is_spent_on_a_layout_already_scored():
    """A tight budget on the digits CNN leaves few layouts: the agent repeats some, and each repeat is moved to an
    unscored neighbour within the budget, so every episode is a new evaluation."""
    exp = Experiment.from_config(load_env("digits-demo"))  # its own Evaluator: no layout cached by other tests
    budget = Budget.parse("0.3flops")
    searcher = get_searcher("td3")(exp.evaluator, budget, evals=30, seed=0, warmup=2, noise_floor=0.0, noise_decay=0.5)
    result = searcher.search()
    layouts = [exp.evaluator.key(c.kept) for c in result.candidates]
    moved = [c for c in result.candidates if "neighbour_of" in c.meta]
    assert searcher.env.on_repeat == "neighbour" and moved  # the agent did repeat itself
    assert not any(c.cached for c in result.candidates) and len(set(layouts)) == len(layouts) == 30
    limit = budget.limit(fvcore_flops(exp.model, exp.example_inputs))
    assert all(fvcore_flops(exp.evaluator.pruner.prune(c.kept), exp.example_inputs) <= limit for c in moved)


def test_sensitivity_state_adds_each_units_drops(digits):
    from autoprune.search.rl.env import FEATURES, SENSITIVITY_RATIOS
    from autoprune.search.sensitivity_scan import parse_ratios, scan

    digits.evaluator.observers.clear()
    searcher = get_searcher("sac")(digits.evaluator, Budget.parse("0.5flops"), evals=3, seed=0, warmup=2,
                                   state="sensitivity")
    searcher.search()
    env = searcher.env
    table = scan(digits.evaluator, parse_ratios("0.1:0.9:0.1"))
    assert env.observation_space.shape == (len(FEATURES) + len(SENSITIVITY_RATIOS),)
    first = env.reset()[0]
    unit = digits.space.units[0]
    expected = [min(1.0, max(0.0, table.drop(unit.name, unit.kept(r)))) for r in SENSITIVITY_RATIOS]
    assert first[len(FEATURES):] == pytest.approx(expected, abs=1e-6)
    assert get_searcher("sac").uses_sensitivity_scan({"state": "sensitivity"})


def test_warm_start_fills_the_replay_buffer_with_an_earlier_runs_trials(cli, tmp_path):
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "random", "--evals", "7", "--out", "earlier",
                       "--quiet")
    assert code == 0, err
    earlier = pd.read_csv(tmp_path / "earlier" / "trials.csv")
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "ddpg", "--episodes", "2", "--action-mode",
                       "project", "--warm-start", "earlier", "--out", "run")
    assert code == 0, err
    assert "warm start: 7 of 7 earlier candidates in the replay buffer" in err
    from autoprune.search.rl.agents import AMCDDPG

    agent = AMCDDPG.load(tmp_path / "run" / "agent.zip")
    agent.load_replay_buffer(tmp_path / "run" / "replay_buffer.pkl")
    steps = len([c for c in earlier.columns if c.startswith("kept:")])
    first = agent.replay_buffer.rewards[: 7 * steps].reshape(7, steps)  # the earlier run's candidates, in order
    assert first[:, -1] == pytest.approx(earlier["proxy_acc"].tolist(), abs=1e-6) and (first[:, :-1] == 0).all()
    assert agent.replay_buffer.dones[: 7 * steps].reshape(7, steps)[:, -1].all()
    assert len(agent.replay_buffer.terminal_rewards()) > 7  # then the new episodes
    assert agent.learning_starts == 0  # the warm-up defaults to none: the earlier run stands in for it


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "ppo", "--warm-start", "x"], "--warm-start"),
    (["--method", "ddpg", "--warm-start", "no-such-run"], "holds no study.db"),
])
def test_bad_warm_start_is_one_line(fails, args, message):
    assert message in fails("search", "--budget", "0.5flops", *args)


def test_benchmark_specs_set_an_agents_options_for_an_ablation():
    from autoprune.bench.settings import BenchSettings, parse_method, parse_methods, spec_options
    from autoprune.presets import load_env

    specs = parse_methods("random, sac:action-mode=amc,warmup-draw=actions,ddpg+sensitivity:noise-floor=0.1")
    assert specs == ("random", "sac:action-mode=amc,warmup-draw=actions", "ddpg+sensitivity:noise-floor=0.1")
    assert parse_method(specs[1]) == ("sac", None, None) and parse_method(specs[2]) == ("ddpg", None, "sensitivity")
    assert spec_options(specs[1]) == {"action_mode": "amc", "warmup_draw": "actions"}
    settings = BenchSettings(env=load_env("digits-demo").to_dict(), budgets=("0.5flops",), methods=specs, evals=30)
    search = settings.search_settings("0.5flops", specs[2], 0)
    assert search.method_options == {"prior": "sensitivity", "warmup": 10, "noise_floor": 0.1}
    for bad, message in [("sac:noise-floor=0.1", "options of sac"), ("ddpg:action-mode=free", "one of amc"),
                         ("ddpg:noise-floor=x", "not a valid value"), ("random:action-mode=amc", "options of random")]:
        with pytest.raises(ConfigError, match=message):
            spec_options(bad)
