"""RLOO under torchrun: 2 gloo processes sample the same tokens and train exactly as 1 process on
the same global batch."""

from functools import partial

from rlhfkit.train.rloo import RLOOConfig, train_rloo
from tests.distributed.ranks import (
    history_losses,
    one_process_and_two_ranks,
)
from tests.train.conftest import length_reward_spec


def test_two_ranks_equal_one_process(tiny_model_dir, tmp_path):
    # 3 prompts of 4 samples: rank 0 holds 2 groups (8 rows), rank 1 one (4 rows); the
    # mini-batches of 4 rows lie on rank 0, on rank 0, then on rank 1; the KL penalty in the
    # reward needs the reference's log-probs of each rank's rows
    cfg = RLOOConfig(
        model=str(tiny_model_dir),
        task="arith",
        reward=length_reward_spec(tmp_path),
        train_prompts=32,
        eval_prompts=4,
        prompts_per_step=3,
        group_size=4,
        mini_batch_size=4,
        max_new_tokens=10,
        eval_max_new_tokens=6,
        max_steps=3,
        lr=1e-3,
        warmup_steps=1,
        beta=0.05,
        eval_every=3,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    one_process_and_two_ranks(
        partial(history_losses, train_rloo),
        cfg,
        tmp_path,
        policy_keys=("reward_mean", "reward_std", "gold_score", "kl_per_sequence", "entropy"),
    )
