from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.errors import ConfigError, NumericalFault
from rlhfkit.models.reward import RewardModel
from rlhfkit.objectives.advantages import reinforce_pp_advantages
from rlhfkit.runtime.config import load_config
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.ppo import (
    PPOConfig,
    _advantages,
    check_ppo_config,
    explained_variance,
    train_ppo,
    unread_reward_model,
    unused_critic_settings,
)
from tests.rollout.recorded_draws import first_apart, recording_draws, step_being_run, steps_before
from tests.train.conftest import length_reward_spec


def config(model, tmp_path, **overrides) -> PPOConfig:
    settings = dict(
        model=str(model),
        task="advice",
        reward=length_reward_spec(tmp_path),
        critic_init="policy",
        train_prompts=64,
        eval_prompts=8,
        prompts_per_step=16,
        mini_batch_size=8,
        ppo_epochs=2,
        max_new_tokens=12,
        eval_max_new_tokens=8,
        max_steps=10,
        lr=1e-2,
        critic_lr=1e-2,
        warmup_steps=1,
        kl_coef=0.01,
        eval_every=100,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    return PPOConfig(**{**settings, **overrides})


def run_dir(tmp_path, name="run"):
    return prepare_run_dir(tmp_path / name, resume=False, overwrite=False)


def test_ppo_climbs_the_reward_and_logs_the_critic(tiny_model_dir, tmp_path):
    result = train_ppo(config(tiny_model_dir, tmp_path), run_dir(tmp_path))
    rewards = [row["proxy_reward"] for row in result.history]
    assert sum(rewards[-3:]) / 3 > 1.2 * sum(rewards[:3]) / 3
    row = result.history[-1]
    for key in (
        "value_loss",
        "explained_variance",
        "kl_per_sequence",
        "kl_per_token",
        "kl_coef",
        "clip_fraction",
        "entropy",
        "gold_score",
        "time_generation",
        "time_reference",
        "time_values",
        "time_forward_backward",
        "time_optimizer",
    ):
        assert key in row, key
    # the first rollout is the reference's
    assert result.history[0]["kl_per_sequence"] == pytest.approx(0.0, abs=1e-4)
    assert result.history[-1]["kl_per_sequence"] > 0
    assert [step for step, _ in result.evals] == [0, 10]
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")


def test_critic_started_from_a_reward_model_and_scored_by_it(tiny_model_dir, tmp_path):
    reward_dir = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(reward_dir)
    cfg = config(
        tiny_model_dir,
        tmp_path,
        reward="",
        reward_model=str(reward_dir),
        critic_init="reward_model",
        max_steps=2,
    )
    result = train_ppo(cfg, run_dir(tmp_path))
    assert len(result.history) == 2 and all(
        torch.isfinite(torch.tensor(r["value_loss"])) for r in result.history
    )


def test_adaptive_kl_moves_the_coefficient_and_the_kl_limit_stops_the_run(tiny_model_dir, tmp_path):
    adaptive = train_ppo(
        config(tiny_model_dir, tmp_path, kl_target=1e-6, max_steps=4), run_dir(tmp_path, "a")
    )
    coefs = [row["kl_coef"] for row in adaptive.history]
    assert coefs[0] == 0.01 and coefs[-1] > coefs[1]  # KL above the target: beta grows
    # step 1 samples from the reference itself: its KL is rounding noise of either sign (the
    # sampler's and the reference's forward passes differ in the last bits; -9e-8 with AVX-512
    # kernels), and one update at lr 1e-2 takes it to about 0.25 nats
    limited = train_ppo(
        config(tiny_model_dir, tmp_path, kl_limit=1e-3, max_steps=6), run_dir(tmp_path, "b")
    )
    assert limited.stopped_at_kl_limit and len(limited.history) == 2
    assert (tmp_path / "b" / "final" / "config.json").is_file()


def test_a_misspelt_critic_init_is_a_one_line_config_error():
    message = "config key 'critic_init': expected one of 'reward_model', 'policy', got 'polcy'"
    with pytest.raises(ConfigError) as error:
        load_config(PPOConfig, None, ["critic_init=polcy"])
    assert str(error.value) == message


def test_config_errors_name_what_to_change(tmp_path):
    with pytest.raises(ConfigError, match="reward_model=PATH"):
        check_ppo_config(PPOConfig(model="m"))
    with pytest.raises(ConfigError, match="mini_batch_size=7 does not divide prompts_per_step=16"):
        check_ppo_config(config("m", tmp_path, mini_batch_size=7))
    # a reward_model that is neither the reward (reward= is) nor the critic's start
    assert unread_reward_model(config("m", tmp_path, reward_model="rm"))
    assert not unread_reward_model(
        config("m", tmp_path, reward_model="rm", critic_init="reward_model")
    )
    assert not unread_reward_model(config("m", tmp_path, reward="", reward_model="rm"))


def test_an_adaptive_kl_target_from_a_zero_kl_coef_is_refused(tmp_path):
    # the controller multiplies kl_coef: from 0 it would stay 0 whatever the KL, ignoring the target
    with pytest.raises(ConfigError, match="kl_target=6.0 with kl_coef=0"):
        check_ppo_config(config("m", tmp_path, kl_coef=0.0, kl_target=6.0))
    check_ppo_config(config("m", tmp_path, kl_coef=0.0, kl_target=0.0))  # no penalty at all
    check_ppo_config(config("m", tmp_path, kl_coef=0.01, kl_target=6.0))


def test_reinforce_pp_climbs_the_reward_without_a_critic(tiny_model_dir, tmp_path, caplog):
    # critic_init=reward_model (the default) with no reward model: no critic is built to need one
    cfg = config(
        tiny_model_dir,
        tmp_path,
        advantage_estimator="reinforce_pp",
        critic_init="reward_model",
        save_every=5,
    )
    result = train_ppo(cfg, run_dir(tmp_path))
    # config() sets critic_lr; the other critic settings keep their defaults
    assert "ppo: critic_lr=0.01 has no effect with advantage_estimator=reinforce_pp" in caplog.text
    rewards = [row["proxy_reward"] for row in result.history]
    assert sum(rewards[-3:]) / 3 > 1.2 * sum(rewards[:3]) / 3
    row = result.history[-1]
    assert {"kl_per_sequence", "clip_fraction", "time_forward_backward"} <= row.keys()
    assert not {"value_loss", "explained_variance", "time_values"} & row.keys()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000005"
    assert (checkpoint / "model").is_dir() and not (checkpoint / "critic").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")


def test_critic_settings_without_a_critic_are_named():
    assert unused_critic_settings(PPOConfig(model="m", critic_lr=1e-3)) == []  # GAE uses it
    rpp = PPOConfig(model="m", advantage_estimator="reinforce_pp")
    assert unused_critic_settings(rpp) == []
    changed = PPOConfig(
        model="m", advantage_estimator="reinforce_pp", critic_lr=1e-3, lam=1.0, critic_init="policy"
    )
    assert unused_critic_settings(changed) == ["critic_init=policy", "critic_lr=0.001", "lam=1.0"]


def test_advantages_by_each_estimator_hand_values():
    # one process: all_rows returns what it is given, and this rank's rows are all of them
    run = SimpleNamespace(all_rows=lambda values: values)
    share = SimpleNamespace(first=0, prompts=["a", "b"])
    rewards = torch.tensor([[0.0, 1.0, 5.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    reinforce = PPOConfig(model="m", advantage_estimator="reinforce_pp", gamma=1.0)
    advantages, returns = _advantages(reinforce, run, share, rewards, None, mask)
    # returns [[1, 1], [0, 0]]: mean 0.5, population std 0.5; the padding's 5 never counts
    assert returns.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]))
    expected = reinforce_pp_advantages(rewards, mask, 1.0, unbiased=False)
    torch.testing.assert_close(advantages, expected[0])
    # GAE with lambda = 1 on V = 0.5 everywhere: the returns minus 0.5, whitened alike
    gae_cfg = PPOConfig(model="m", gamma=1.0, lam=1.0)
    values = torch.full_like(rewards, 0.5)
    advantages, returns = _advantages(gae_cfg, run, share, rewards, values, mask)
    assert returns.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]))


def test_explained_variance_hand_values():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    # values = the mean: residual variance equals the variance -> 0
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)


def test_one_update_per_rollout_runs_the_critic_once_per_step_and_learns_the_same(
    tiny_model_dir, tmp_path, monkeypatch
):
    from rlhfkit.train import ppo

    calls = []
    original = ppo.response_values
    monkeypatch.setattr(
        ppo, "response_values", lambda *a, **k: calls.append(1) or original(*a, **k)
    )

    def one_update(**extra):  # 3 steps of one update per rollout
        return config(
            tiny_model_dir,
            tmp_path,
            ppo_epochs=1,
            mini_batch_size=16,
            max_steps=3,
            eval_every=-1,
            **extra,
        )

    single_run = run_dir(tmp_path, "single")
    with recording_draws(step_being_run(single_run), near_ties=True) as sampled_single:
        single = train_ppo(one_update(), single_run)
    assert len(calls) == 3  # the rollout's pass is the training pass
    # shared_critic_pass=false: a separate rollout pass without autograd, the same numbers
    calls.clear()
    separate_run = run_dir(tmp_path, "separate")
    with recording_draws(step_being_run(separate_run)) as sampled_separate:
        separate = train_ppo(one_update(shared_critic_pass=False), separate_run)
    assert len(calls) == 6
    # values with and without autograd are equal up to rounding, and so are the weights after
    # each update: steps 2 and 3 sample the same tokens unless a draw sat on a near-tie, where
    # the runs may part (`first_apart`); the steps before it are compared
    agree = steps_before(first_apart(sampled_single, sampled_separate), 1, 3)
    for key in ("loss", "value_loss", "kl_per_sequence"):
        expected = [row[key] for row in single.history[:agree]]
        assert [row[key] for row in separate.history[:agree]] == pytest.approx(
            expected, rel=1e-5, abs=1e-7
        )
    # two mini-batches of the same rollout: the second sees an updated critic, so a separate
    # rollout pass
    calls.clear()
    train_ppo(
        config(
            tiny_model_dir, tmp_path, ppo_epochs=1, mini_batch_size=8, max_steps=1, eval_every=-1
        ),
        run_dir(tmp_path, "two"),
    )
    assert len(calls) == 3
    # the critic still learns from that one pass: its loss falls
    values_first = [row["value_loss"] for row in single.history]
    assert all(v > 0 for v in values_first) and values_first[-1] < values_first[0]


def test_rewards_that_overflow_the_value_loss_stop_the_run_instead_of_training_on(
    tiny_model_dir, tmp_path, caplog
):
    # 1e30 squared is past float32: the critic's loss is inf at every step. It used to train on
    # silently; now each update is skipped with a warning, then the run stops without final/
    reward = tmp_path / "huge.py"
    reward.write_text(
        "def huge(prompts, responses, **columns):\n    return [1e30] * len(responses)\n"
    )
    cfg = config(
        tiny_model_dir, tmp_path, reward=f"{reward}:huge", max_steps=4, max_nonfinite_skips=1
    )
    run = run_dir(tmp_path)
    with pytest.raises(NumericalFault, match="non-finite updates"):
        train_ppo(cfg, run)
    assert "update skipped" in caplog.text
    assert not run.final.exists()
