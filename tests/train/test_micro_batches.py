"""Micro-batches change memory, not the update: every policy trainer's run with its mini-batches
cut into micro-batches (of a size that does not divide them, so the last slice is short) ends
with the weights and losses of the unsplit run, up to float rounding. Gradient checkpointing
neither: every trainer's gradient is the one without it."""

import dataclasses
import json
import random
from contextlib import contextmanager

import pytest
import torch

from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train import offline_loop, policy_run, ppo
from rlhfkit.train.dpo import train_dpo
from rlhfkit.train.grpo import train_grpo
from rlhfkit.train.micro_batches import backward_micro_batches, micro_slices, row_stat, token_stat
from rlhfkit.train.online_dpo import train_online_dpo
from rlhfkit.train.optim import clipped_step
from rlhfkit.train.ppo import train_ppo
from rlhfkit.train.raft import train_raft
from rlhfkit.train.reward import train_reward_model
from rlhfkit.train.rloo import train_rloo
from rlhfkit.train.sft import train_sft

from . import (
    test_dpo,
    test_grpo,
    test_online_dpo,
    test_ppo,
    test_raft,
    test_reward,
    test_rloo,
    test_sft,
)
from .test_reward import gold_ranking, write_jsonl

# Two computation paths (split or whole, recomputed or kept) give gradients that differ in the
# last bits, and by how much depends on the CPU's vector width: DPO's came 3.8e-6 apart
# (relative, in norm) with AVX-512 kernels and 4.9e-6 with AVX2 ones, where an element-wise
# 1e-6 failed on its smallest entries. A wrong denominator or a lost slice moves the gradient by
# percents, so the whole vector is compared, relative to its norm.
GRADIENT_TOLERANCE = 1e-4


def assert_same_gradient(actual: torch.Tensor, expected: torch.Tensor) -> None:
    gap, size = torch.linalg.vector_norm(actual - expected), torch.linalg.vector_norm(expected)
    assert gap <= GRADIENT_TOLERANCE * size, f"gradients {gap:.2e} apart, norm {size:.2e}"


@pytest.fixture(scope="module")
def rankings(tmp_path_factory):
    """Gold-ranked advice replies (K = 4): train and held-out files."""
    rng = random.Random(0)
    rows = [gold_ranking(p, rng) for p in AdviceTask().prompts(60, rng)]
    folder = tmp_path_factory.mktemp("rankings")
    return (
        write_jsonl(folder / "rankings.jsonl", rows[:40]),
        write_jsonl(folder / "eval_rankings.jsonl", rows[40:]),
    )


@pytest.fixture(scope="module")
def sft_rows(tmp_path_factory) -> str:
    """Arithmetic prompts with correct completions: SFT's training file."""
    rows = ArithTask(flawed_fraction=0.0).sft_examples(16, random.Random(0))
    return test_sft.write_jsonl(tmp_path_factory.mktemp("sft") / "train.jsonl", rows)


def test_slices_cover_the_rows_once_and_zero_means_one_slice():
    assert micro_slices(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert micro_slices(7, 0) == [slice(0, 7)]
    assert micro_slices(4, 8) == [slice(0, 4)]


def test_accumulated_gradient_and_weighted_stats_equal_the_whole_batch():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3))
    part = {
        "x": torch.randn(5, 3),
        "response_mask": torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0], [1, 0]]).bool(),
    }

    def loss_of(micro):
        values = micro["x"] @ weight  # (rows,)
        tokens = micro["response_mask"].sum(dim=1)
        loss = (values * tokens).sum() / 6  # over the whole part's 6 tokens
        mean = (values.detach() * tokens).sum() / tokens.sum().clamp(min=1)
        return loss, {
            "token_mean": token_stat(mean, micro["response_mask"]),
            "row_mean": row_stat(values.detach().mean(), micro["response_mask"]),
        }

    whole_loss, whole_stats = backward_micro_batches(part, 0, loss_of)
    whole_grad, weight.grad = weight.grad.clone(), None
    split_loss, split_stats = backward_micro_batches(part, 2, loss_of)
    assert split_loss == pytest.approx(whole_loss, rel=1e-6)
    assert torch.allclose(weight.grad, whole_grad, atol=1e-6)
    for name in whole_stats:
        assert split_stats[name] == pytest.approx(whole_stats[name], rel=1e-5), name


# one update per step and one step, so every gradient is taken at the same weights in both runs
# (after a first Adam step, rounding can flip the sign of a near-zero gradient element, and the
# runs would part by the learning rate there)
ONE_UPDATE = dict(max_steps=1)
TRAINERS = {
    "grpo": (
        train_grpo,
        test_grpo.config,
        dict(beta=0.1, prompts_per_step=4, group_size=4, mini_batch_size=16),
    ),
    "rloo": (
        train_rloo,
        test_rloo.config,
        dict(prompts_per_step=4, group_size=4, mini_batch_size=16),
    ),
    "ppo": (train_ppo, test_ppo.config, dict(ppo_epochs=1, prompts_per_step=4, mini_batch_size=4)),
    "raft": (train_raft, test_raft.config, dict(epochs_per_round=1, mini_batch_size=16)),
    "online-rft": (train_raft, test_raft.config, dict(mode="online_rft", mini_batch_size=16)),
}


def recorded_gradients(monkeypatch, modules=(policy_run, ppo)) -> list[torch.Tensor]:
    """Every update's gradient (all parameters, flattened), recorded as `clipped_step` applies
    it in `modules`."""
    seen = []

    def recording(optimizer, *args, **kwargs):
        grads = [p.grad.flatten() for g in optimizer.param_groups for p in g["params"]]
        seen.append(torch.cat([g for g in grads if g is not None]).clone())
        return clipped_step(optimizer, *args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, "clipped_step", recording)
    return seen


@pytest.mark.parametrize("name", list(TRAINERS))
def test_micro_batches_give_the_unsplit_update(name, tiny_model_dir, tmp_path, monkeypatch):
    train, config, settings = TRAINERS[name]
    gradients, histories = {}, {}
    for size in (0, 3):  # 3 divides no mini-batch here: the last slice is short
        gradients[size] = recorded_gradients(monkeypatch)
        cfg = config(tiny_model_dir, tmp_path, micro_batch_size=size, **ONE_UPDATE, **settings)
        run = prepare_run_dir(tmp_path / f"micro{size}", resume=False, overwrite=False)
        histories[size] = train(cfg, run).history
    # RLOO's first loss is zero up to rounding (its leave-one-out advantages sum to zero in each
    # group, and the policy is the sampler): 4e-9 with AVX-512 kernels, -1.5e-7 with AVX2 ones
    assert histories[3][0]["loss"] == pytest.approx(histories[0][0]["loss"], rel=1e-5, abs=1e-6)
    assert len(gradients[0]) == len(gradients[3]) == (2 if name == "ppo" else 1)
    for whole, split in zip(gradients[0], gradients[3], strict=True):
        assert_same_gradient(split, whole)


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(num_heads=2, imitation_coef=0.5, centering_coef=0.1),
    ],
    ids=["bradley-terry", "ensemble-imitation-centring"],
)
def test_reward_model_accumulation_gives_the_unsplit_update(
    settings,
    tiny_model_dir,
    rankings,
    tmp_path,
    monkeypatch,
):
    gradients, losses = {}, {}
    for batch_size, grad_accum in ((8, 1), (4, 2)):  # the same 8 rankings in one or two passes
        gradients[grad_accum] = recorded_gradients(monkeypatch, [offline_loop])
        cfg = test_reward.config(
            tiny_model_dir,
            *rankings,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_steps=1,
            eval_data="",
            **settings,
        )
        run = prepare_run_dir(tmp_path / f"accum{grad_accum}", resume=False, overwrite=False)
        torch.manual_seed(0)  # the heads' initialisation
        losses[grad_accum] = train_reward_model(cfg, run).train_losses
    assert losses[2][0] == pytest.approx(losses[1][0], rel=1e-5)
    assert_same_gradient(gradients[2][0], gradients[1][0])


def one_update(name: str, model, rankings, sft_rows: str, tmp_path) -> tuple:
    """Trainer `name`'s train function and its test module's config, cut to one step on the
    tiny model."""
    step = dict(max_steps=1)
    configs = {
        "grpo": (train_grpo, test_grpo.config(model, tmp_path, mini_batch_size=16, **step)),
        "rloo": (train_rloo, test_rloo.config(model, tmp_path, mini_batch_size=16, **step)),
        "ppo": (train_ppo, test_ppo.config(model, tmp_path, ppo_epochs=1, **step)),
        "raft": (train_raft, test_raft.config(model, tmp_path, epochs_per_round=1, **step)),
        "online-dpo": (train_online_dpo, test_online_dpo.config(model, tmp_path, **step)),
        "reward": (train_reward_model, test_reward.config(model, *rankings, eval_data="", **step)),
        "dpo": (train_dpo, test_dpo.config(model, (rankings[0], ""), **step)),
        "sft": (train_sft, test_sft.config(model, sft_rows, "", **step)),
    }
    return configs[name]


@contextmanager
def forwards_inside_backward():
    """Inside, a one-element count of the module forwards run inside a backward: the recomputed
    activations of checkpointed layers (without checkpointing none run there)."""
    count, inside = [0], [False]
    backward = torch.autograd.backward

    def marked_backward(*args, **kwargs):
        inside[0] = True
        try:
            return backward(*args, **kwargs)
        finally:
            inside[0] = False

    def hook(module, args, output):
        count[0] += inside[0]

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.autograd, "backward", marked_backward)
        try:
            yield count
        finally:
            handle.remove()


@pytest.mark.parametrize(
    "name", ["grpo", "rloo", "ppo", "raft", "online-dpo", "reward", "dpo", "sft"]
)
def test_gradient_checkpointing_gives_the_same_update(
    name,
    tiny_model_dir,
    rankings,
    sft_rows,
    tmp_path,
    monkeypatch,
):
    """Recomputed activations, the same gradient; GRPO's and RLOO's shared prompts and the
    reward model's fall back to whole rows under checkpointing (its dropped cache would cut them
    off)."""
    train, cfg = one_update(name, tiny_model_dir, rankings, sft_rows, tmp_path)
    gradients, recomputed = {}, {}
    for on in (False, True):
        gradients[on] = recorded_gradients(monkeypatch, [policy_run, ppo, offline_loop])
        torch.manual_seed(0)  # the reward model's head
        run = prepare_run_dir(tmp_path / f"{name}{on}", resume=False, overwrite=False)
        with forwards_inside_backward() as count:
            train(dataclasses.replace(cfg, gradient_checkpointing=on), run)
        recomputed[on] = count[0]
        saved = [json.loads(p.read_text()) for p in run.root.rglob("config.json")]
        assert saved and all(c["use_cache"] for c in saved)  # as loaded, not training's False
    # the option reached the model: layers re-ran in the backward only when it was on
    assert recomputed[False] == 0 and recomputed[True] > 0
    assert len(gradients[True]) == len(gradients[False]) > 0
    for plain, checkpointed in zip(gradients[False], gradients[True], strict=True):
        assert_same_gradient(checkpointed, plain)
