"""GRPO under torchrun: 2 gloo processes sample the same tokens and train exactly as 1 process on
the same global batch."""

import json
import logging
import random
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.models.reward import RewardModel
from rlhfkit.objectives.aggregate import LossAggregation
from rlhfkit.objectives.group_advantages import GroupNorm
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from tests.distributed.ranks import (
    history_losses,
    max_weight_difference,
    one_process_and_two_ranks,
    run_on_ranks,
    sharding_frozen,
    small_policy_run,
)
from tests.rollout.recorded_draws import Sampled, first_apart, steps_before
from tests.train.conftest import length_reward_spec


@pytest.mark.parametrize(
    "aggregation, norm, mu, frozen_models",
    [
        # a token mean: the denominator is the mini-batch's tokens over both ranks
        (LossAggregation.TOKEN_MEAN, GroupNorm.GRPO, 1, "replicated"),
        # Dr. GRPO, two passes over the rollout (6 updates in all)
        (LossAggregation.CONSTANT_LENGTH, GroupNorm.DR_GRPO, 2, "replicated"),
        # the reference sharded like the policy, gathered around its passes on each rank's rows
        (LossAggregation.TOKEN_MEAN, GroupNorm.GRPO, 1, "sharded"),
    ],
)
def test_two_ranks_equal_one_process(
    tiny_model_dir, tmp_path, aggregation, norm, mu, frozen_models
):
    # 3 prompts of 4 samples: rank 0 holds 2 groups (8 rows), rank 1 one (4 rows); the
    # mini-batches of 6 rows lie on rank 0 alone, then across both ranks. The reward is the
    # response's length, which a random tiny model varies (arith's verifier gives it only 0s)
    cfg = GRPOConfig(
        model=str(tiny_model_dir),
        task="arith",
        reward=length_reward_spec(tmp_path),
        loss_aggregation=aggregation,
        norm=norm,
        mu=mu,
        train_prompts=32,
        eval_prompts=4,
        prompts_per_step=3,
        group_size=4,
        mini_batch_size=6,
        micro_batch_size=4,
        max_new_tokens=10,
        eval_max_new_tokens=6,
        max_steps=3,
        lr=1e-3,
        warmup_steps=1,
        beta=0.04,
        frozen_models=frozen_models,
        eval_every=3,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    sharded = ["LlamaForCausalLM"] if frozen_models == "sharded" else []  # the reference
    train = partial(sharding_frozen, partial(history_losses, train_grpo), sharded)
    one_process_and_two_ranks(
        train,
        cfg,
        tmp_path,
        policy_keys=("reward_mean", "reward_std", "gold_score", "kl_per_token", "clip_fraction"),
    )


def test_lora_two_ranks_equal_one_process(tiny_model_dir, tmp_path):
    # LoRA adapters on the sharded policy; the reference is the same shards, adapters off
    cfg = GRPOConfig(
        **{**small_policy_run(tiny_model_dir, length_reward_spec(tmp_path)), "lr": 1e-2},
        lora_r=4,
        lora_alpha=8,
        prompts_per_step=3,
        group_size=4,
        mini_batch_size=6,
        micro_batch_size=4,
        beta=0.04,
    )
    one, two = one_process_and_two_ranks(
        partial(history_losses, train_grpo),
        cfg,
        tmp_path,
        policy_keys=("reward_mean", "gold_score", "kl_per_token"),
    )
    weights = AutoModelForCausalLM.from_pretrained(two.final).state_dict()
    assert not any("lora" in name for name in weights)
    started = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert max_weight_difference(weights, started) > 1e-5  # the merged adapters moved it


def test_the_runs_may_part_only_at_a_near_tie():
    # the 1-process run drew row 0's tokens 2, 5, 7; at the second draw 5 and 6 were a near-tie
    acceptable = torch.zeros(1, 3, 8, dtype=torch.bool)
    acceptable[0, 0, 2] = acceptable[0, 1, 5] = acceptable[0, 1, 6] = acceptable[0, 2, 7] = True
    one = [Sampled(1, 0, 1, [[2, 5, 7]], acceptable), Sampled(2, 0, 1, [[2, 5, 7]], acceptable)]

    def two(first_call, second_call):
        return [Sampled(1, 0, 1, [first_call]), Sampled(2, 0, 1, [second_call])]

    assert first_apart(one, two([2, 5, 7], [2, 5, 7])) is None
    # the other path chose 6 there and went its own way: the runs part at step 2
    assert first_apart(one, two([2, 5, 7], [2, 6, 1, 1])) == 2
    assert steps_before(2, 1, 3) == 1 and steps_before(None, 1, 3) == 3
    with pytest.raises(AssertionError, match=r"1 row 0 token 1: \(5, 4\) are no near-tie"):
        first_apart(one, two([2, 4, 7], [2, 5, 7]))  # 4 was no near-tie of 5
    with pytest.raises(AssertionError, match="other lengths"):
        first_apart(one, two([2, 5], [2, 5, 7]))
    with pytest.raises(AssertionError, match="the recorded draws are not the run's"):
        first_apart([Sampled(1, 0, 1, [[3, 5, 7]], acceptable)], [Sampled(1, 0, 1, [[3, 5, 7]])])


def _warned_run(cfg: GRPOConfig, root: str) -> tuple[list[str], list[dict]]:
    """On every rank: `train_grpo(cfg)` in `root`, with the warnings rlhfkit logged meanwhile."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("rlhfkit")
    logger.addHandler(handler)
    try:
        history = train_grpo(cfg, RunDir(Path(root))).history
    finally:
        logger.removeHandler(handler)
    return [record.getMessage() for record in records], history


def test_rank_zero_warns_of_what_only_rank_ones_samples_meet(tiny_model_dir, tmp_path):
    # rank 1's two prompts (of 4, in order) are long: sampled past the model's 256 positions,
    # and cut by the reward model, whose reward_max_length leaves room for rank 0's samples.
    # Rank 0 alone logs: it must warn with the step's numbers, as one process does
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    prompts = [p.prompt for p in ArithTask().prompts(4, random.Random(0))]
    prompts[2:] = ["Ann has 3 pens. " * 40 + prompt for prompt in prompts[2:]]
    lengths = [len(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    assert max(lengths[:2]) + 8 < 256 < min(lengths[2:])
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    cfg = GRPOConfig(
        model=str(tiny_model_dir),
        train_data=str(data),
        reward=f"model:{rm}",
        reward_max_length=max(lengths) + 2,
        shuffle=False,
        prompts_per_step=4,
        group_size=2,
        mini_batch_size=8,
        max_new_tokens=8,
        max_steps=1,
        beta=0.0,
        eval_every=-1,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    warnings, history = run_on_ranks(2, _warned_run, cfg, str(run.root))
    cut = round(history[0][f"reward_cut_fraction/model:{rm}"] * 8)
    assert cut > 0  # rank 1's answers, longer than 2 tokens with their EOS
    assert warnings == [
        f"sampling (prompt + max_new_tokens): sequences of up to {max(lengths) + 8} positions, "
        "past the model's max_position_embeddings=256; its outputs there are unreliable",
        f"reward source 'model:{rm}': {cut} of 8 samples are longer than reward_max_length="
        f"{max(lengths) + 2} tokens and are scored with the end of the answer and its EOS cut "
        "(truncation 'keep_start'): raise reward_max_length so the reward model reads whole "
        "answers (warned once)",
    ]
