"""DPO under torchrun: 2 gloo processes equal 1 process on the same global batches."""

from functools import partial

import pytest

from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.train.dpo import DPOConfig, train_dpo
from tests.distributed.ranks import close, one_process_and_two_ranks, sharding_frozen
from tests.distributed.test_reward import rankings  # noqa: F401 (a fixture)


@pytest.mark.parametrize(
    "loss, batch_size, lora_r, frozen_models",
    [
        ("sigmoid", 5, 0, "replicated"),  # each rank takes 3 or 2 groups of a micro-batch
        # rank 1 has no group: it runs a zero-weight stand-in
        ("plackett_luce", 1, 0, "replicated"),
        # LoRA: the adapters train on the sharded policy, the reference is its base (adapters off)
        ("sigmoid", 5, 4, "replicated"),
        # the reference sharded like the policy: rank 0 runs two reference passes a step, rank 1
        # one (its stand-in), on parameters gathered once
        ("plackett_luce", 1, 0, "sharded"),
    ],
)
def test_two_ranks_equal_one_process(
    tiny_model_dir,
    rankings,  # noqa: F811
    tmp_path,
    loss,
    batch_size,
    lora_r,
    frozen_models,
):
    cfg = DPOConfig(
        model=str(tiny_model_dir),
        train_data=rankings[0],
        eval_data=rankings[1],
        loss=loss,
        nll_weight=0.1,
        lora_r=lora_r,
        lora_alpha=8 if lora_r else 16,  # an adapter setting without adapters is refused
        frozen_models=frozen_models,
        batch_size=batch_size,
        grad_accum=2,
        max_steps=3,
        lr=1e-3,
        warmup_steps=1,
        eval_every=3,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    sharded = ["LlamaForCausalLM"] if frozen_models == "sharded" else []  # the reference
    train = partial(sharding_frozen, train_dpo, sharded)
    one, two = one_process_and_two_ranks(train, cfg, tmp_path)
    rows_one, rows_two = read_metrics(one.metrics_path), read_metrics(two.metrics_path)
    for a, b in zip(rows_one, rows_two):  # means over all the step's pairs, whatever the split
        for key in ("loss", "accuracy"):
            assert close(a[key], b[key]), key
        # the implicit rewards are beta times differences of sequence log-probs of tens of nats,
        # so their rounding scales with those sums, not with the small difference: at step 1,
        # before any update, they are already up to 7e-6 apart (the shared-prompt path below),
        # and up to 1.04e-5 after two updates (9.6e-6 with AdamW's loop instead of its fused
        # kernel)
        for key in ("margin", "rewards_chosen"):
            assert abs(a[key] - b[key]) <= 3e-5, key
        # a rank whose share of a micro-batch holds rankings of one size runs each prompt once
        # (the shared-prompt path), where the whole mixed micro-batch runs every row whole: the
        # same gradient by another float path, measured up to 2e-5 apart relative to its norm
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"]
    assert close(rows_one[-1]["eval_loss"], rows_two[-1]["eval_loss"])
