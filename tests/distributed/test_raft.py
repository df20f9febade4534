"""RAFT and online RFT under torchrun: 2 gloo processes sample the same tokens and train exactly as
1 process on the same round."""

from functools import partial
from pathlib import Path

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.objectives.selection import Selection
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.raft import RAFTConfig, RAFTMode, train_raft
from tests.distributed.ranks import (
    history_losses,
    one_process_and_two_ranks,
    run_on_ranks,
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
    selecting = dict(
        selection=Selection.TOP_FRACTION,
        keep_fraction=0.5,
        require_correct=False,
        epochs_per_round=2,
    )
    cfg = RAFTConfig(
        **small_policy_run(tiny_model_dir, length_reward_spec(tmp_path)),
        **(selecting if mode is RAFTMode.RAFT else {}),  # raft's alone (online RFT refuses them)
        mode=mode,
        reward_threshold=1.1,
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


def refusal(cfg, root: str) -> str:
    """`train_raft` on this rank: the ConfigError's message (every rank refuses alike)."""
    try:
        train_raft(cfg, prepare_run_dir(Path(root), resume=False, overwrite=False))
    except ConfigError as error:
        return str(error)
    return "no error"


def test_fewer_prompts_than_ranks_is_refused_naming_the_setting(tiny_model_dir, tmp_path):
    cfg = RAFTConfig(
        **small_policy_run(tiny_model_dir, length_reward_spec(tmp_path)),
        prompts_per_round=1,
        samples_per_prompt=4,
        mini_batch_size=4,
    )
    message = run_on_ranks(2, refusal, cfg, str(tmp_path / "run"))
    assert message.startswith("prompts_per_round=1 is fewer than the 2 ranks: ")
    assert message.endswith("(raise prompts_per_round)")
