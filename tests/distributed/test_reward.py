"""Reward-model training under torchrun: 2 gloo processes equal 1 process on the same global
batches, and rank 0's model loads with plain transformers."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.tasks.advice import AdviceTask, gold_score
from rlhfkit.tasks.advice_writer import write_reply
from rlhfkit.train.reward import RewardConfig, train_reward_model
from tests.distributed.ranks import close, one_process_and_two_ranks


@pytest.fixture
def rankings(tmp_path) -> tuple[str, str]:
    """Rankings of 2 to 4 replies (uneven groups), ordered by the gold score."""
    rng = random.Random(0)
    rows = []
    for prompt in AdviceTask().prompts(24, rng):
        topic = prompt.metadata["topic"]
        replies = [write_reply(rng, topic) for _ in range(rng.choice((2, 3, 4)))]
        replies.sort(key=lambda reply: -gold_score(topic, reply))
        rows.append({"prompt": prompt.prompt, "responses": replies})
    paths = []
    for name, part in (("train.jsonl", rows[:19]), ("eval.jsonl", rows[19:])):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in part))
        paths.append(str(tmp_path / name))
    return paths[0], paths[1]


# 19 prompts in batches of 5 (the epoch's last holds 4), 3 steps of 2 micro-batches. lr 3e-4:
# AdamW's update divides by the root of the squared gradient, which magnifies the reduction's
# rounding (1e-7) in weights whose gradient is near zero, by an amount proportional to the
# rate; at 1e-3 one weight came 4.9e-6 apart with AVX-512 kernels and 9.7e-6 with AVX2 ones
THREE_STEPS = dict(
    batch_size=5,
    grad_accum=2,
    max_steps=3,
    lr=3e-4,
    warmup_steps=1,
    save_every=0,
    progress=False,
    tensorboard=False,
)


def test_two_ranks_equal_one_process(tiny_model_dir, rankings, tmp_path):
    # two heads (a bootstrap ensemble), the centring term: every term's denominator spans both
    # ranks
    cfg = RewardConfig(
        model=str(tiny_model_dir),
        train_data=rankings[0],
        eval_data=rankings[1],
        num_heads=2,
        centering_coef=0.1,
        eval_every=3,
        **THREE_STEPS,
    )
    one, two = one_process_and_two_ranks(train_reward_model, cfg, tmp_path)
    # the loss terms add up exactly, and the statistics of the model's reward are the whole
    # step's (summed raw counts and sums), however the rows are cut across ranks
    keys = ("loss", "bt_loss", "grad_norm", "train_pair_accuracy", "reward_mean", "reward_std")
    for a, b in zip(read_metrics(one.metrics_path), read_metrics(two.metrics_path)):
        for key in keys + ("reward_head_std",):
            assert close(a[key], b[key]), key
    assert (
        read_metrics(two.metrics_path)[-1]["eval_accuracy"]
        == read_metrics(one.metrics_path)[-1]["eval_accuracy"]
    )
    model = AutoModelForSequenceClassification.from_pretrained(two.final)
    assert model.config.num_labels == 2


def test_lora_two_ranks_equal_one_process(tiny_model_dir, rankings, tmp_path):
    # adapters on the sharded backbone and the whole head train; rank 0 merges the gathered
    # adapters into a fresh copy of the start, so final/ is a plain classifier
    cfg = RewardConfig(model=str(tiny_model_dir), train_data=rankings[0], lora_r=8, **THREE_STEPS)
    _, two = one_process_and_two_ranks(train_reward_model, cfg, tmp_path)
    final = load_file(two.final / "model.safetensors")
    assert not any("lora" in key for key in final) and "score.weight" in final
    base = load_file(tiny_model_dir / "model.safetensors")
    moved = [k for k in final if k in base and not torch.equal(final[k], base[k])]
    assert moved and all("proj" in key for key in moved)  # only the adapted layers changed
    model, loading = AutoModelForSequenceClassification.from_pretrained(
        two.final, output_loading_info=True
    )
    assert model.config.num_labels == 1 and not loading["missing_keys"]
