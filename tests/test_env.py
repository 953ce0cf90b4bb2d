"""The AMC pruning environment: API checkers, the budget guarantee under any actions, rewards, errors."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoprune.core.budget import Budget
from autoprune.core.cost import count_params, fvcore_flops
from autoprune.core.evaluator import Candidate
from autoprune.errors import (
    AutopruneError,
    BudgetError,
    ConfigError,
    UnsupportedModelError,
)
from autoprune.experiment import Experiment
from autoprune.presets import load_env
from autoprune.search.rl.env import ENV_ID, FEATURES, ChannelPruningEnv


@pytest.fixture(scope="module")
def digits() -> Experiment:
    return Experiment.from_config(load_env("digits-demo"))


@pytest.fixture(scope="module")
def rounded(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    """The digits CNN in a space with coarse channel rounding and a lower ratio bound."""
    space = tmp_path_factory.mktemp("space") / "rounded.yaml"
    space.write_text("min_ratio: 0.1\nmax_ratio: 0.7\nround_to: 8\nrules:\n  - {pattern: features.13, round_to: 16}\n")
    config = load_env("digits-demo")
    config.search_space = str(space)
    return Experiment.from_config(config)


def _episode(env: gymnasium.Env, actions: list[float]) -> tuple[list[np.ndarray], float, dict]:
    observation, _ = env.reset(seed=0)
    observations, reward, info = [observation], 0.0, {}
    for i, a in enumerate(actions):
        observation, reward, terminated, truncated, info = env.step(np.array([a], dtype=np.float32))
        observations.append(observation)
        assert terminated == (i == len(actions) - 1) and not truncated
    return observations, reward, info


@pytest.mark.parametrize("source", ["preset", "evaluator"])
def test_passes_gymnasium_and_sb3_checkers_without_warnings(digits, source):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    kwargs = {"env": "digits-demo"} if source == "preset" else {"evaluator": digits.evaluator}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gymnasium.make(ENV_ID, budget="0.5flops", **kwargs)  # with gymnasium's passive checker
        _episode(env, [0.0] * len(digits.space))
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_episode_observations_reward_and_info(digits):
    env = ChannelPruningEnv(digits.evaluator, budget="0.5flops")
    assert env.observation_space.shape == (len(FEATURES),) and env.observation_space.dtype == np.float32
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    observations, reward, info = _episode(env, [0.0] * len(digits.space))
    assert len(observations) == len(digits.space) + 1
    assert all(o in env.observation_space for o in observations)
    index = [o[FEATURES.index("index")] for o in observations[:-1]]
    assert index == pytest.approx(np.linspace(0, 1, len(digits.space)))  # unit index, min-max normalised
    removed = [o[FEATURES.index("removed")] for o in observations]
    assert removed[0] == 0 and removed == sorted(removed) and removed[-1] == pytest.approx(0.5, abs=0.01)
    assert observations[-1][FEATURES.index("remaining")] == 0
    candidate: Candidate = info["candidate"]
    assert candidate.ok and reward == pytest.approx(candidate.proxy_acc) and info["proxy_acc"] == candidate.proxy_acc
    assert info["policy"] == candidate.policy and info["flops"] == candidate.flops and info["params"] == candidate.params
    assert candidate.meta["within_budget"] and set(candidate.meta["sample"]) == set(digits.space.names)


def test_action_maps_onto_the_unit_bounds_when_the_budget_allows(digits):
    env = ChannelPruningEnv(digits.evaluator, budget="1.0flops", tight=False)
    _, _, info = _episode(env, [-1.0, 1.0, 0.0, -1.0, 1.0])
    units = digits.space.units
    expected = [units[0].min_ratio, units[1].max_ratio, (units[2].min_ratio + units[2].max_ratio) / 2,
                units[3].min_ratio, units[4].max_ratio]
    assert [info["policy"][u.name] for u in units] == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["amc", "project"])
def test_a_repeated_layout_pays_the_repeat_penalty(digits, mode):
    """An episode whose layout an earlier episode made is rewarded its accuracy minus the penalty (a new one is not),
    whatever actions led there; without a penalty a repeat is only flagged."""
    env = ChannelPruningEnv(digits.evaluator, budget="0.5flops", action_mode=mode, repeat_penalty=0.02)
    plain = ChannelPruningEnv(digits.evaluator, budget="0.5flops", action_mode=mode)
    actions = [0.3, -0.2, 0.1, 0.0, 0.5]
    _, first, info = _episode(env, actions)
    assert not info["repeat"] and first == pytest.approx(info["proxy_acc"])
    _, again, info = _episode(env, actions)
    assert info["repeat"] and again == pytest.approx(info["proxy_acc"] - 0.02)
    _, other, info = _episode(env, [-0.9, 0.9, -0.5, 0.7, -0.3])
    assert not info["repeat"] and other == pytest.approx(info["proxy_acc"])
    for _ in range(2):
        _, reward, info = _episode(plain, actions)
    assert info["repeat"] and reward == pytest.approx(info["proxy_acc"])
    with pytest.raises(ConfigError, match="repeat penalty must be a finite number >= 0"):
        ChannelPruningEnv(digits.evaluator, budget="0.5flops", repeat_penalty=-0.1)


@pytest.mark.parametrize("mode", ["amc", "project"])
def test_a_layout_scored_before_becomes_an_unscored_neighbour_within_the_budget(mode):
    """With on_repeat="neighbour", an episode ending on a layout an earlier episode made evaluates a new layout, one
    move away, that meets the budget by an independent FLOPs count; with "again" it is answered from the cache."""
    exp = Experiment.from_config(load_env("digits-demo"))
    env = ChannelPruningEnv(exp.evaluator, budget="0.5flops", action_mode=mode, on_repeat="neighbour", seed=0)
    actions = [0.3, -0.2, 0.1, 0.0, 0.5]
    _, _, first = _episode(env, actions)
    assert not first["repeat"] and not first["neighbour"] and not first["candidate"].cached
    layouts = [first["kept"]]
    dense = fvcore_flops(exp.model, exp.example_inputs)
    for _ in range(3):
        _, reward, info = _episode(env, actions)
        assert info["repeat"] and info["neighbour"] and not info["candidate"].cached
        assert info["kept"] not in layouts and info["candidate"].meta["neighbour_of"] == first["kept"]
        assert fvcore_flops(exp.evaluator.pruner.prune(info["kept"]), exp.example_inputs) <= 0.5 * dense
        assert reward == pytest.approx(info["proxy_acc"])
        layouts.append(info["kept"])
    again = ChannelPruningEnv(exp.evaluator, budget="0.5flops", action_mode=mode, seed=0)
    _, _, info = _episode(again, actions)
    assert info["candidate"].cached and info["kept"] == first["kept"] and not info["neighbour"]
    resumed = ChannelPruningEnv(exp.evaluator, budget="0.5flops", action_mode=mode, on_repeat="neighbour", seed=1)
    resumed.remember(layouts)  # a resumed search's recorded layouts count as made
    _, _, info = _episode(resumed, actions)
    assert info["repeat"] and info["neighbour"] and info["kept"] not in layouts
    with pytest.raises(ConfigError, match="unknown on-repeat 'skip'; choose one of again, neighbour"):
        ChannelPruningEnv(exp.evaluator, budget="0.5flops", on_repeat="skip")


def test_reward_variants(digits):
    env = ChannelPruningEnv(digits.evaluator, budget="0.5flops", reward="acc-flops")
    _, reward, info = _episode(env, [0.0] * len(digits.space))
    assert reward == pytest.approx(-(1 - info["proxy_acc"]) * math.log(info["flops"]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("space, budget", [("digits", "0.5flops"), ("digits", "0.3flops"), ("digits", "0.4params"),
                                           ("rounded", "0.5flops"), ("rounded", "0.5params")])
def test_every_final_policy_meets_the_budget(request, space, budget, data):
    exp: Experiment = request.getfixturevalue(space)
    n = len(exp.space)
    extremes = st.sampled_from([[-1.0] * n, [1.0] * n, [(-1.0) ** i for i in range(n)], [-((-1.0) ** i) for i in range(n)]])
    actions = data.draw(st.one_of(extremes, st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n)))
    env = ChannelPruningEnv(exp.evaluator, budget=budget, evaluate=_cost_only(exp))
    _, _, info = _episode(env, actions)
    network = exp.evaluator.build(info["policy"])
    metric = Budget.parse(budget).metric
    measured = fvcore_flops(network, exp.example_inputs) if metric == "flops" else count_params(network)
    dense = fvcore_flops(exp.model, exp.example_inputs) if metric == "flops" else count_params(exp.model)
    limit = Budget.parse(budget).value * dense
    assert measured <= limit
    # tight clipping spends the budget up to about one channel step of the last unit (16 of 128 when rounded)
    assert measured >= (0.97 if space == "digits" else 0.85) * limit


@pytest.mark.parametrize("space", ["digits", "rounded"])
def test_policy_for_is_the_episode_policy_without_an_evaluation(request, space):
    exp: Experiment = request.getfixturevalue(space)
    n, rng = len(exp.space), np.random.default_rng(0)
    evaluated = []

    def evaluate(policy, meta):
        evaluated.append(policy)
        return _cost_only(exp)(policy, meta)

    env = ChannelPruningEnv(exp.evaluator, budget="0.5flops", evaluate=evaluate)
    for actions in ([-1.0] * n, [1.0] * n, list(rng.uniform(-1, 1, n)), list(rng.uniform(-1, 1, n))):
        actions = [float(np.float32(a)) for a in actions]  # the float32 values _episode steps with
        policy = env.policy_for(actions)
        assert not evaluated
        _, _, info = _episode(env, actions)
        assert evaluated.pop() == policy == info["policy"]
        assert exp.evaluator.cost.flops(exp.space.kept(policy)) <= 0.5 * exp.evaluator.cost.dense_flops
    with pytest.raises(gymnasium.error.ResetNeeded):  # policy_for leaves no episode running
        env.policy_for([0.0] * n) and env.step(np.zeros(1, dtype=np.float32))
    with pytest.raises(AutopruneError, match=f"one action per unit \\({n}\\), got 2"):
        env.policy_for([0.0, 0.0])
    with pytest.raises(AutopruneError, match="finite"):
        env.policy_for([math.nan] * n)


def _cost_only(exp: Experiment):
    """An ``evaluate`` that prices the policy without scoring it (the budget property needs no accuracy)."""

    def evaluate(policy, meta):
        kept = exp.space.kept(policy)
        return Candidate(0, policy, kept, "ok", 0.5, exp.evaluator.cost.flops(kept), exp.evaluator.cost.params(kept),
                         meta=dict(meta))

    return evaluate


def test_bad_input_is_a_clear_error(digits, tmp_path: Path):
    with pytest.raises(ConfigError, match="not both"):
        ChannelPruningEnv(digits.evaluator, budget="0.5flops", env="digits-demo")
    with pytest.raises(ConfigError, match="neither"):
        ChannelPruningEnv(budget="0.5flops")
    with pytest.raises(ConfigError, match="'bogus'.*acc, acc-flops, acc-latency"):
        ChannelPruningEnv(digits.evaluator, budget="0.5flops", reward="bogus")
    with pytest.raises(ConfigError, match="latency budget 0.7latency"):
        ChannelPruningEnv(digits.evaluator, budget="0.7latency")
    with pytest.raises(ConfigError, match="acc-latency.*measures latency"):
        ChannelPruningEnv(digits.evaluator, budget="0.5flops", reward="acc-latency")
    with pytest.raises(BudgetError, match="cannot be met"):
        ChannelPruningEnv(digits.evaluator, budget="0.01flops")
    with pytest.raises(BudgetError, match="'0.5bananas'"):
        ChannelPruningEnv(digits.evaluator, budget="0.5bananas")
    with pytest.raises(ConfigError, match="unknown env preset 'nope'"):
        gymnasium.make(ENV_ID, env="nope", budget="0.5flops")
    (tmp_path / "none.yaml").write_text("include: ['no-such-layer']\n")
    (tmp_path / "env.yaml").write_text(f"model: digits-cnn\nweights: builtin\ndataset: digits\ninput_shape: [1, 1, 8, 8]\n"
                                       f"search_space: {tmp_path / 'none.yaml'}\n")
    with pytest.raises(UnsupportedModelError, match="no prunable unit"):
        gymnasium.make(ENV_ID, env=str(tmp_path / "env.yaml"), budget="0.5flops")
    env = ChannelPruningEnv(digits.evaluator, budget="0.5flops")
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(1, dtype=np.float32))


def test_the_documented_import_and_gym_id_keep_working():
    import autoprune.env

    assert autoprune.env.ChannelPruningEnv is ChannelPruningEnv and ENV_ID == "autoprune/ChannelPruning-v0"
    env = gymnasium.make("autoprune.env:autoprune/ChannelPruning-v0", env="digits-demo", budget="0.5flops")
    assert isinstance(env.unwrapped, ChannelPruningEnv)
    env.close()


@pytest.mark.parametrize("budget", ["0.3flops", "0.5flops", "0.7flops", "0.5params"])
def test_relative_mode_zero_actions_give_the_uniform_policy(digits, rounded, budget):
    from autoprune.search.uniform import UniformSearcher

    for exp in (digits, rounded):
        uniform = UniformSearcher(exp.evaluator, Budget.parse(budget))._ask()
        env = ChannelPruningEnv(exp.evaluator, budget=budget, action_mode="relative")
        assert exp.space.kept(env.policy_for(np.zeros(len(exp.space)))) == exp.space.kept(uniform)


@pytest.mark.parametrize("mode", ["relative", "project"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.floats(-1.0, 1.0), min_size=5, max_size=5), budget=st.sampled_from([0.3, 0.5, 0.8]))
def test_new_modes_meet_the_budget_whatever_the_actions(rounded, mode, actions, budget):
    env = ChannelPruningEnv(rounded.evaluator, budget=f"{budget}flops", action_mode=mode)
    kept = rounded.space.kept(env.policy_for(actions))
    cost = env.cost(kept)
    assert cost <= env.limit
    if mode == "project":  # the budget used up to 1%, or no unit can take one more rounding step
        grow = [u for u in rounded.space.units if kept[u.name] < u.max_kept]
        assert cost >= 0.99 * env.limit or all(
            env.cost({**kept, u.name: min(u.max_kept, kept[u.name] + u.round_to)}) > env.limit for u in grow)


@pytest.mark.parametrize("mode", ["amc", "relative", "project"])
def test_every_action_mode_and_extra_features_pass_the_checkers(digits, mode):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    features = {u.name: [0.1 * i, 0.5] for i, u in enumerate(digits.space.units)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gymnasium.make(ENV_ID, evaluator=digits.evaluator, budget="0.5flops", action_mode=mode,
                             unit_features=features, on_repeat="neighbour", seed=0)
        assert env.observation_space.shape == (len(FEATURES) + 2,)
        _episode(env, [0.3] * len(digits.space))
        assert _episode(env, [0.3] * len(digits.space))[2]["neighbour"]  # (the checkers then step a moving env)
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_planned_actions_make_the_planned_policy(digits):
    for mode in ("amc", "relative", "project"):
        env = ChannelPruningEnv(digits.evaluator, budget="0.5flops", action_mode=mode, seed=4)
        target = env.draw_warmup()
        env.reset()
        info: dict = {}
        for _ in digits.space.units:
            info = env.step(env.planned_action())[4]
        expected = env.project(target) if mode == "project" else target
        assert digits.space.kept(info["policy"]) == digits.space.kept(expected), mode


def test_a_stopped_candidate_rewards_its_estimate(digits):
    env = ChannelPruningEnv(digits.evaluator, budget="0.5flops")
    stopped = Candidate(index=0, policy=digits.space.policy_from_kept({u.name: u.channels for u in digits.space.units}),
                        kept={}, status="stopped", proxy_acc=0.42, flops=1, params=1, fidelity=250)
    assert env.reward(stopped) == pytest.approx(0.42)
