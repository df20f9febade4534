"""Per-batch losses of the reward-model trainer: the model call plus the pure objectives."""

from dataclasses import dataclass

import torch

from rlhfkit.data.ranking_batch import RankedGroup, collate_groups
from rlhfkit.data.steps import EncodedSteps, collate_steps
from rlhfkit.models.reward import RewardModel
from rlhfkit.objectives.preference import pair_outcomes
from rlhfkit.objectives.ranking import gather_pair_rewards
from rlhfkit.objectives.reward import bradley_terry_loss, process_reward_loss, reward_centering_loss
from rlhfkit.objectives.sft import sft_loss
from rlhfkit.runtime.device import move_batch


def bootstrap_weights(row_ids: list[int], num_heads: int, seed: int) -> torch.Tensor:
    """(rows, heads) Poisson(1) counts, a pure function of (seed, row): each ensemble head sees
    its own bootstrap resample of the prompts, which is what makes the heads disagree where
    the data is thin. One head gets weight 1 everywhere."""
    if num_heads == 1:
        return torch.ones(len(row_ids), 1)
    draws = []
    for row in row_ids:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + row)
        draws.append(torch.poisson(torch.ones(num_heads), generator=generator))
    return torch.stack(draws)


@dataclass(frozen=True)
class PairDenominators:
    """What the pairwise loss's terms divide by, counted over a whole step's groups, so the
    losses of its micro-batches add up to the loss of the step."""

    groups: int
    responses: int
    best_tokens: int
    """Completion tokens of the groups' top responses (the imitation term's targets)."""


def pair_denominators(groups: list[RankedGroup]) -> PairDenominators:
    best = [g.responses[min(range(len(g.ranks)), key=g.ranks.__getitem__)] for g in groups]
    return PairDenominators(
        groups=len(groups),
        responses=sum(len(g.responses) for g in groups),
        best_tokens=max(1, sum(sum(r.completion_mask) for r in best)),
    )


def pairwise_loss(
    model: RewardModel,
    groups: list[RankedGroup],
    row_ids: list[int],
    *,
    pad_token_id: int,
    seed: int,
    imitation_coef: float,
    centering_coef: float,
    denominators: PairDenominators | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry over all pairs of each group (weight 1/C(K,2) per pair, mean over groups),
    plus the optional imitation (LM on each group's best response) and centring terms, each
    over `denominators` (None: these groups' own)."""
    counts = denominators or pair_denominators(groups)
    batch = move_batch(collate_groups(groups, pad_token_id), model.device)
    # K responses to each prompt (every group the same size): each prompt runs once
    sizes = {len(group.responses) for group in groups}
    rewards = model.rewards_by_length(
        batch["input_ids"],
        batch["attention_mask"],
        response_mask=batch["response_mask"],
        group_size=sizes.pop() if len(sizes) == 1 else 1,
    )
    chosen, rejected = gather_pair_rewards(rewards, batch["winners"], batch["losers"])
    heads = bootstrap_weights(row_ids, model.num_heads, seed).to(model.device)[batch["pair_group"]]
    weights = batch["pair_weights"].unsqueeze(-1) * heads
    loss = bradley_terry_loss(
        chosen, rejected, weights, counts.groups * model.num_heads, batch["margins"]
    )
    stats = {"bt_loss": loss.item(), **reward_stats(rewards.detach(), batch)}
    if imitation_coef:  # the LM term reads only each group's best response: its own forward pass
        best = batch["best"]
        ids, mask = batch["input_ids"][best], batch["response_mask"][best]
        logits = model.lm_logits(model(ids, batch["attention_mask"][best]).hidden)
        imitation = sft_loss(logits, ids, mask, counts.best_tokens)
        loss = loss + imitation_coef * imitation
        stats["imitation_loss"] = imitation.item()
    if centering_coef:
        loss = loss + centering_coef * reward_centering_loss(
            rewards, counts.responses * model.num_heads
        )
    return loss, stats


def reward_stats(rewards: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Statistics of the reward the model defines, the mean over its heads (what eval_accuracy
    and every later stage read), from (responses, heads) `rewards`: this micro-batch's pair
    accuracy, reward mean and std, and with several heads their spread (the mean over
    responses of the std over heads, the ensemble's uncertainty, Bessel-corrected as the
    reward source's). Also the raw sums and counts, so that a step's values over micro-batches
    or ranks are the whole batch's (train.reward adds them up and replaces the means)."""
    reward = rewards.float().mean(dim=-1)  # (responses,), as eval_accuracy scores
    outcomes = pair_outcomes(reward[batch["winners"]], reward[batch["losers"]])
    stats = {
        "train_pair_accuracy": outcomes.mean().item(),
        "pairs_right": outcomes.sum().item(),
        "pairs_counted": float(outcomes.numel()),
        "reward_mean": reward.mean().item(),
        "reward_std": reward.std().item(),
        "reward_sum": reward.double().sum().item(),
        "reward_sq_sum": reward.double().square().sum().item(),
        "reward_count": float(reward.numel()),
    }
    if rewards.shape[-1] > 1:
        spread = rewards.double().std(dim=-1)  # (responses,)
        stats["reward_head_std"] = spread.mean().item()
        stats["head_std_sum"] = spread.sum().item()
    return stats


def process_loss(
    model: RewardModel,
    items: list[EncodedSteps],
    *,
    pad_token_id: int,
    denominator: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """Binary cross-entropy of every step's correctness, read at the step's last token, over
    `denominator` steps (None: these items' own; a step's micro-batches share the step's)."""
    batch = move_batch(collate_steps(items, pad_token_id), model.device)
    step_logits = process_step_logits(model, batch)
    total = batch["step_mask"].sum() if denominator is None else denominator
    loss = process_reward_loss(step_logits, batch["step_labels"], batch["step_mask"], total)
    right = ((step_logits > 0).float() == batch["step_labels"]) & batch["step_mask"]
    steps = batch["step_mask"].sum()
    return loss, {
        "step_accuracy": (right.sum() / steps).item(),
        "steps_right": right.sum().item(),  # raw counts, added up over a step's micro-batches
        "steps_counted": steps.item(),
    }


def process_step_logits(model: RewardModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, steps) mean-over-heads logit that each step is correct."""
    out = model(batch["input_ids"], batch["attention_mask"])
    token_scores = model.token_scores(out.hidden).mean(dim=-1)  # (batch, seq)
    return token_scores.gather(1, batch["step_ends"])
