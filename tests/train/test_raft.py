import json
import math
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.errors import ConfigError
from rlhfkit.rewards.base import RewardScores
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.policy_run import PolicyRun
from rlhfkit.train.raft import (
    RAFTConfig,
    check_raft_config,
    rollout_rows,
    sft_minibatch_loss,
    train_raft,
    verdict_scores,
)
from tests.train.conftest import length_reward_spec


def config(model, tmp_path, **overrides) -> RAFTConfig:
    settings = dict(
        model=str(model),
        task="arith",
        reward=length_reward_spec(tmp_path),
        train_prompts=64,
        eval_prompts=8,
        prompts_per_round=4,
        samples_per_prompt=4,
        mini_batch_size=8,
        max_new_tokens=12,
        eval_max_new_tokens=8,
        max_steps=12,
        lr=2e-2,
        warmup_steps=1,
        require_correct=False,
        eval_every=100,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    if overrides.get("mode") == "online_rft":
        del settings["require_correct"]  # raft's alone, refused under online RFT
    return RAFTConfig(**{**settings, **overrides})


def mean(values) -> float:
    return sum(values) / len(values)


def test_raft_keeps_the_best_samples_and_climbs_the_reward(tiny_model_dir, tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    result = train_raft(config(tiny_model_dir, tmp_path, epochs_per_round=2), run)
    history = result.history
    assert len(history) == 12 and all(
        row["kept_count"] == 4 for row in history
    )  # best of 4, for 4 prompts
    # the best of each group is at least the group's mean, and above it wherever rewards differ
    assert all(row["kept_reward_mean"] >= row["reward_mean"] for row in history)
    assert mean([row["kept_reward_mean"] for row in history]) > mean(
        [row["reward_mean"] for row in history]
    )
    rewards = [row["reward_mean"] for row in history]
    assert mean(rewards[-3:]) > 1.5 * mean(rewards[:3])
    lines = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    # step 0: the starting policy's evaluation alone
    assert [row["step"] for row in lines] == list(range(0, 13)) and lines[0]["stage"] == "raft"
    metrics = lines[1:]
    for key in (
        "reward_mean",
        "kept_count",
        "kept_reward_mean",
        "kept_length",
        "loss",
        "gold_score",
        "correct_fraction",
        "response_length",
        "tokens_per_s",
        "time_generation",
        "time_reward",
        "time_update",
        "optimizer_steps",
    ):
        assert key in metrics[0], key
    assert metrics[0]["optimizer_steps"] == 2  # 4 kept rows, one mini-batch, two epochs
    assert [step for step, _ in result.evals] == [0, 12] and "accuracy" in result.evals[-1][1]
    assert "eval_accuracy" in metrics[-1]
    AutoModelForCausalLM.from_pretrained(run.final)


def test_online_rft_climbs_a_thresholded_reward(tiny_model_dir, tmp_path):
    # length / 10 > 1.2: responses of more than 12 characters count as correct
    cfg = config(tiny_model_dir, tmp_path, mode="online_rft", reward_threshold=1.2)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    history = train_raft(cfg, run).history
    rewards = [row["reward_mean"] for row in history]
    assert mean(rewards[-3:]) > 1.2 * mean(rewards[:3])
    assert mean([row["correct_fraction"] for row in history[-3:]]) > mean(
        [row["correct_fraction"] for row in history[:3]]
    )
    assert (
        "kept_count" not in history[0] and history[0]["optimizer_steps"] == 2
    )  # 16 responses, mini-batches of 8
    AutoModelForCausalLM.from_pretrained(run.final)


def test_a_round_without_a_correct_sample_leaves_the_policy_unchanged(
    tiny_model_dir, tmp_path, caplog
):
    cfg = config(tiny_model_dir, tmp_path, require_correct=True, reward_threshold=1e6, max_steps=2)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with caplog.at_level("WARNING", logger="rlhfkit.train.raft"):
        history = train_raft(cfg, run).history
    warned = [r.message for r in caplog.records if "no response scored above" in r.message]
    assert len(warned) == 1 and warned[0].startswith("round 1: ")  # once, not every round
    assert "reward_threshold=1e+06" in warned[0] and "keeps none" in warned[0]
    assert [row["kept_count"] for row in history] == [0, 0]
    assert [row["optimizer_steps"] for row in history] == [0, 0]
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    final = AutoModelForCausalLM.from_pretrained(run.final).state_dict()
    assert all(torch.equal(start[name], final[name]) for name in start)


def test_sft_loss_of_sampled_rows_is_their_mean_negative_sampling_logprob(tiny_model_dir, tmp_path):
    # prompts of different lengths are left-padded: the loss must read the response tokens at
    # the positions they were sampled at, and only them
    cfg = config(tiny_model_dir, tmp_path)
    run = PolicyRun(
        cfg,
        prepare_run_dir(tmp_path / "run", resume=False, overwrite=False),
        resume=False,
        needs_reference=False,
        stage="raft",
    )
    rollout, _ = run.sample(run.prompts_for_step(0, 4), 2, max_new_tokens=12, temperature=1.0)
    assert not rollout.prompt_mask.all()  # some padding to get wrong
    with torch.no_grad():
        loss = sft_minibatch_loss(cfg, run, rollout_rows(rollout, torch.arange(8)))
    expected = -rollout.logprobs[rollout.response_mask].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_top_fraction_keeps_that_share_of_the_round(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path, selection="top_fraction", keep_fraction=0.5, max_steps=2)
    history = train_raft(
        cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    ).history
    assert [row["kept_count"] for row in history] == [8, 8]  # half of 4 prompts * 4 samples
    assert all(row["kept_reward_mean"] >= row["reward_mean"] for row in history)


@pytest.mark.parametrize("eval_every, evaluated_at", [(0, [0, 2]), (1, [0, 1, 2]), (-1, [])])
def test_eval_every_evaluates_at_the_start_and_end_or_never(
    tiny_model_dir, tmp_path, eval_every, evaluated_at
):
    cfg = config(tiny_model_dir, tmp_path, max_steps=2, eval_every=eval_every)
    result = train_raft(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
    assert [step for step, _ in result.evals] == evaluated_at and len(result.history) == 2


@pytest.mark.parametrize("mode", ["raft", "online_rft"])
def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(tiny_model_dir, tmp_path, mode):
    cfg = config(
        tiny_model_dir, tmp_path, mode=mode, reward_threshold=1.2, max_steps=4, save_every=2
    )
    full = prepare_run_dir(tmp_path / "full", resume=False, overwrite=False)
    train_raft(cfg, full)
    # the uninterrupted run left its round-2 checkpoint: resume a copy of it from there
    shutil.copytree(full.root, tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "final")
    resumed = prepare_run_dir(tmp_path / "resumed", resume=True, overwrite=False)
    history = train_raft(cfg, resumed, resume=True).history
    assert len(history) == 2  # rounds 3 and 4 only
    a, b = (
        load_file(full.final / "model.safetensors"),
        load_file(resumed.final / "model.safetensors"),
    )
    assert all(torch.equal(a[name], b[name]) for name in a)
    losses = {  # the training steps (step 0: the starting evaluation, logged once)
        run: [json.loads(line)["loss"] for line in run.metrics_path.read_text().splitlines()[1:]]
        for run in (full, resumed)
    }
    assert len(losses[full]) == 4 and losses[full] == losses[resumed]


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(keep_fraction=0.0), r"keep_fraction=0.0: must be in \(0, 1\]"),
        (dict(keep_fraction=1.5), "keep_fraction=1.5"),
        (dict(samples_per_prompt=0), "samples_per_prompt=0: must be at least 1"),
        (dict(mini_batch_size=0), "mini_batch_size=0"),
    ],
)
def test_sizes_that_leave_nothing_to_train_on_are_rejected(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        check_raft_config(config("m", tmp_path, **override))


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(wrong_coef=0.0), "^wrong_coef=0.0 is read by mode=online_rft only"),
        (dict(loss_aggregation="token_mean"), "^loss_aggregation=token_mean is read by mode=onl"),
        (dict(mode="online_rft", epochs_per_round=2), "^epochs_per_round=2 is read by mode=raft"),
        (dict(mode="online_rft", require_correct=False), "^require_correct=false is read by mo"),
        (dict(mode="online_rft", selection="top_fraction"), "^selection=top_fraction is read by"),
        (dict(keep_fraction=0.5), "^keep_fraction=0.5 is read by selection=top_fraction only"),
    ],
)
def test_a_setting_the_mode_or_selection_would_ignore_is_refused(tmp_path, override, message):
    # they were accepted and did nothing
    with pytest.raises(ConfigError, match=message):
        check_raft_config(config("m", tmp_path, **override))
    check_raft_config(config("m", tmp_path, selection="top_fraction", keep_fraction=0.5))
    check_raft_config(config("m", tmp_path, mode="online_rft", wrong_coef=0.0))


def test_a_round_of_one_response_logs_no_spread_and_no_torch_warning(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path, prompts_per_round=1, samples_per_prompt=1, max_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was torch's "std(): degrees of freedom is <= 0"
        history = train_raft(
            cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
        ).history
    assert math.isnan(history[0]["reward_std"])  # null in metrics.jsonl


def test_with_a_sum_holding_the_verifier_correct_means_the_verifier_said_so(
    tiny_model_dir, tmp_path
):
    # task + length / 10: every answer of the tiny model is wrong (reward/task 0), and its
    # length alone lifted the sum above reward_threshold: correct_fraction 1.0, all kept
    reward = f"task + {length_reward_spec(tmp_path)}"
    cfg = config(tiny_model_dir, tmp_path, reward=reward, require_correct=True, max_steps=1)
    (row,) = train_raft(
        cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    ).history
    assert row["reward/task"] == 0.0 and row["reward_mean"] > cfg.reward_threshold
    assert row["correct_fraction"] == 0.0 and row["kept_count"] == 0


def test_the_verdict_is_the_task_terms_own_reward_less_the_missing_eos_penalty(tmp_path):
    total = torch.tensor([1.3, 0.9, 1.1])  # task + a bonus of 0.3, 0.9, 0.1
    scored = RewardScores(rewards=total, components={"task": torch.tensor([1.0, 0.0, 1.0])})
    finished = torch.tensor([True, True, False])
    cfg = config("m", tmp_path, reward="task + 0.1*f.py:bonus", missing_eos_penalty=0.25)
    assert verdict_scores(cfg, scored, total, finished).tolist() == [1.0, 0.0, 0.75]
    # no verifier in the sum, or a lone reward: the reward itself, as before
    for reward in ("f.py:a + f.py:b", "task"):
        alone = config("m", tmp_path, reward=reward)
        assert verdict_scores(alone, scored, total, finished) is total
    # advice's `task` term is a score, not a verdict: the sum decides
    advice = config("m", tmp_path, task="advice", reward="task + 0.1*f.py:bonus")
    assert verdict_scores(advice, scored, total, finished) is total


def test_a_threshold_that_cannot_split_the_verifiers_verdicts_is_refused(tmp_path):
    # set for the sum's scale, it would call every answer wrong
    with pytest.raises(ConfigError, match=r"^reward_threshold=1.2: with reward=task \+ f.py:b"):
        check_raft_config(config("m", tmp_path, reward="task + f.py:b", reward_threshold=1.2))
    check_raft_config(config("m", tmp_path, reward="task + f.py:b", reward_threshold=0.0))
    check_raft_config(config("m", tmp_path, reward="f.py:b", reward_threshold=1.2))
