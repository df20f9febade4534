"""RAFT and online RFT under torchrun: 2 gloo processes sample the same tokens and train exactly as
1 process on the same round."""

from functools import partial

import pytest

from rlhfkit.objectives.selection import Selection
from rlhfkit.train.raft import RAFTConfig, RAFTMode, train_raft
from tests.distributed.ranks import (
    history_losses,
    one_process_and_two_ranks,
    small_policy_run,
)
from tests.train.conftest import length_reward_spec


@pytest.mark.parametrize(
    "mode, keys",
    [
        # the top half of the round's 12 responses, chosen over both ranks' rewards; two epochs
        # of mini-batches of 4 kept rows, shuffled, so most hold rows of both ranks
        (RAFTMode.RAFT, ("kept_count", "kept_reward_mean", "kept_length")),
        # every response weighted; mini-batches of 5 rows: on rank 0, across both, on rank 1
        (RAFTMode.ONLINE_RFT, ("correct_fraction",)),
    ],
)
def test_two_ranks_equal_one_process(tiny_model_dir, tmp_path, mode, keys):
    # 3 prompts of 4 samples: rank 0 holds 2 prompts (8 rows), rank 1 one (4 rows). The reward
    # is the response's length, which a random tiny model varies; the threshold keeps the
    # longer ones correct and the shorter ones wrong
    cfg = RAFTConfig(
        **small_policy_run(tiny_model_dir, length_reward_spec(tmp_path)),
        mode=mode,
        selection=Selection.TOP_FRACTION,
        keep_fraction=0.5,
        reward_threshold=1.1,
        require_correct=False,
        epochs_per_round=2,
        prompts_per_round=3,
        samples_per_prompt=4,
        mini_batch_size=5 if mode is RAFTMode.ONLINE_RFT else 4,
        micro_batch_size=2,
    )
    one_process_and_two_ranks(
        partial(history_losses, train_raft),
        cfg,
        tmp_path,
        policy_keys=("reward_mean", "reward_std", "gold_score", *keys),
    )
