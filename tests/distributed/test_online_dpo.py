"""Online and iterative DPO under torchrun: 2 gloo processes sample the same tokens, get the same
labels and train exactly as 1 process on the same batches."""

from functools import partial
from pathlib import Path

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.train.online_dpo import OnlineDPOConfig, Regime, train_online_dpo
from tests.distributed.ranks import (
    history_losses,
    one_process_and_two_ranks,
    run_on_ranks,
    small_policy_run,
)
from tests.train.conftest import length_reward_spec


@pytest.mark.parametrize(
    "settings",
    [
        # pairs labelled by the task's simulated human (its temperature calibrated on rank 0's
        # first batch), one group per forward pass: 2 on rank 0, 1 on rank 1
        dict(regime=Regime.ONLINE, labeller="annotator", loss=DPOLoss.SIGMOID, micro_batch_size=1),
        # rankings of 3 by the reward, sampled for two steps at once (6 prompts: 3 per rank), the
        # reference the policy itself at each refresh
        dict(
            regime=Regime.ITERATIVE,
            refresh_every=2,
            samples_per_prompt=3,
            labeller="reward",
            loss=DPOLoss.PLACKETT_LUCE,
            refresh_reference=True,
        ),
    ],
)
def test_two_ranks_equal_one_process(tiny_model_dir, tmp_path, settings):
    cfg = OnlineDPOConfig(
        **small_policy_run(tiny_model_dir, length_reward_spec(tmp_path)),
        prompts_per_step=3,
        **{"samples_per_prompt": 2, **settings},
    )
    keys = ("reward_mean", "gold_score", "labels_used", "accuracy", "margin", "kl_per_token")
    one_process_and_two_ranks(
        partial(history_losses, train_online_dpo), cfg, tmp_path, policy_keys=keys
    )


def refusal(cfg: OnlineDPOConfig, root: str) -> str:
    """The error `train_online_dpo` stops with on this rank ('' if it ran)."""
    try:
        train_online_dpo(cfg, RunDir(Path(root)))
    except RlhfkitError as error:
        return str(error)
    return ""


def test_a_reward_labeller_is_refused_with_sharded_frozen_models(tmp_path):
    # rank 0 alone ranks the samples, and a sharded reward model would need every rank
    cfg = OnlineDPOConfig(task="arith", labeller="reward", frozen_models="sharded")
    assert run_on_ranks(1, refusal, cfg, str(tmp_path)) == (
        "not supported under torchrun yet: labeller=reward with frozen_models=sharded "
        "(see docs/scaling.md)"
    )
