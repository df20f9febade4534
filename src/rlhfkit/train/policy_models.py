"""The models of a policy-optimisation run, built once: the policy, its frozen reference, PPO's
critic and their optimizers, as one frozen `PolicyModels` bundle (from the checkpoint on
resume). Under torchrun the trained models (policy, critic) are sharded with FSDP2 before their
optimizers are built; the frozen reference is whole on every rank, or with
`frozen_models=sharded` sharded over the same mesh (`runtime.distributed.place_frozen`)."""

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.length_chunks import ROWS_PER_CHUNK
from rlhfkit.errors import ConfigError
from rlhfkit.models.fused_layers import use_fastest_kernels
from rlhfkit.models.loading import (
    disable_dropout,
    enable_checkpointing,
    load_tokenizer,
    same_vocabulary,
)
from rlhfkit.models.reward import value_model_from
from rlhfkit.rewards.base import RewardScores, RewardSource
from rlhfkit.rewards.builder import build_reward_source
from rlhfkit.rewards.combined import single_sources
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.distributed import (
    Ranks,
    device_mesh,
    place_frozen,
    reduce_sums,
    shard_model,
)
from rlhfkit.train.checkpointing import load_configured_policy, load_frozen_reference
from rlhfkit.train.lora_settings import check_lora_settings
from rlhfkit.train.optim import adamw
from rlhfkit.train.policy_config import PolicyRunConfig, check_reference_model

CRITIC_SUBDIR = "critic"


@dataclass(frozen=True)
class PolicyModels:
    """The models and optimizers of a policy run, built once by `build_policy_models`."""

    policy: torch.nn.Module
    """The trained causal LM (LoRA adapters on the base when lora_r > 0), in train mode."""
    reference: torch.nn.Module | None
    """The frozen reference; None without a KL term, and under LoRA (the base, adapters off)."""
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    """AdamW over the policy's trainable parameters."""
    device: torch.device
    critic: torch.nn.Module | None = None
    """PPO's value model (a one-head reward model), in train mode; None for the other trainers."""
    critic_optimizer: torch.optim.Optimizer | None = None
    mesh: Any = None
    """The device mesh the models are sharded over under torchrun; None in a single process."""


def check_same_tokenizer(tokenizer, model: str, key: str, path: str, hint: str = "") -> None:
    """Refuse a model (`key`=`path`) saved with a tokenizer other than the policy's (`model`'s):
    it is fed the policy's token ids. A directory without a tokenizer is not checked."""
    if path and path != model and not same_vocabulary(tokenizer, path):
        raise ConfigError(
            f"{key}={path}: its tokenizer is not the policy's ({model}), whose token ids it "
            f"would read; use a model with the same tokenizer{hint}"
        )


def build_policy_models(
    cfg: PolicyRunConfig,
    checkpoint: Path | None,
    *,
    needs_reference: bool,
    critic_start: str = "",
    critic_lr: float = 0.0,
    ranks: Ranks | None = None,
) -> PolicyModels:
    """The policy (and its reference when `needs_reference`), and with `critic_start` a critic
    started from that directory (PPO), each with its AdamW; on resume (`checkpoint`) the
    trained models come from the checkpoint (their optimizer states are put back by
    `policy_checkpoint.restore_policy_checkpoint`). `ranks` under torchrun:
    the policy and critic sharded over them, and the reference with `frozen_models=sharded`."""
    check_reference_model(cfg, needs_reference)  # as the trainer's own check did
    check_lora_settings(cfg)
    tokenizer = load_tokenizer(cfg.model)
    # the reference and the critic read the policy's token ids: another vocabulary would feed
    # them ids that stand for other tokens (or lie past their embedding table)
    check_same_tokenizer(tokenizer, cfg.model, "reference_model", cfg.reference_model)
    if critic_start and critic_start != cfg.model:
        check_same_tokenizer(
            tokenizer, cfg.model, "reward_model", critic_start, "; or set critic_init=policy"
        )
    device = resolve_device(cfg.device)
    policy = load_configured_policy(cfg, checkpoint, device)
    if cfg.disable_dropout:
        disable_dropout(policy)
    if cfg.gradient_checkpointing:
        enable_checkpointing(policy)
    mesh = device_mesh(device, ranks) if ranks is not None and ranks.sharded else None
    if mesh is not None:
        policy = shard_model(policy, mesh, cfg.precision)
    reference = None
    if needs_reference and cfg.lora_r == 0:
        reference = load_frozen_reference(
            cfg.reference_model or cfg.model,
            device=device,
            precision=cfg.precision,
            frozen_models=cfg.frozen_models,
            mesh=mesh,
        )
    optimizer = adamw(policy.parameters(), cfg.lr, cfg.weight_decay)
    critic = critic_optimizer = None
    if critic_start:
        critic_dir = checkpoint / CRITIC_SUBDIR if checkpoint else critic_start
        critic = value_model_from(critic_dir).to(device).train()
        if cfg.disable_dropout:
            disable_dropout(critic)
        use_fastest_kernels(critic.model, device, cfg.precision)
        if cfg.gradient_checkpointing:
            enable_checkpointing(critic.model)
        if mesh is not None:
            critic = shard_model(critic, mesh, cfg.precision)
        critic_optimizer = adamw(critic.parameters(), critic_lr, cfg.weight_decay)
    return PolicyModels(
        policy,
        reference,
        tokenizer,
        optimizer,
        device,
        critic,
        critic_optimizer,
        mesh,
    )


def build_run_reward(
    cfg: PolicyRunConfig, spec: str | None, models: PolicyModels
) -> RewardSource | None:
    """The run's reward source from `spec` (None: the run has none), on the models' device; a
    reward model in it is placed as the run's frozen models are (`frozen_models`), and leaves
    the warning about the samples it cuts to `warn_if_cut`, which counts a whole step's."""
    if spec is None:
        return None
    return build_reward_source(
        spec,
        task_name=cfg.task or None,
        tokenizer=models.tokenizer,
        device=models.device,
        batch_size=ROWS_PER_CHUNK,
        max_length=cfg.reward_max_length,
        uncertainty_coef=cfg.reward_uncertainty_coef,
        timeout_s=cfg.reward_timeout_s or None,
        first_call_timeout_s=cfg.reward_first_call_timeout_s or math.inf,
        precision=cfg.precision,
        place_model=partial(
            place_frozen, frozen_models=cfg.frozen_models, mesh=models.mesh, precision=cfg.precision
        ),
        warn_cut=False,
    )


def warn_if_cut(reward: RewardSource, scored: RewardScores, samples: int, ranks: Ranks) -> None:
    """Warn, once per reward model of `reward` (`build_run_reward`'s), when it read samples cut
    to fit reward_max_length, counted over every rank's `samples` as one process counts a step's
    (one all-reduce: every rank calls it together; `Ranks()`: these samples alone)."""
    counts = {f"cut/{name}": float(cut.sum()) for name, cut in scored.cut.items()}
    if not counts:  # no reward model in the reward, alike on every rank
        return
    every = reduce_sums({**counts, "samples": float(samples)}, ranks)
    models = {source.name: source for source in single_sources(reward)}
    for name in scored.cut:
        models[name].warn_once_if_cut(int(every[f"cut/{name}"]), int(every["samples"]))
