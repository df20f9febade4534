"""Per-batch work of the DPO trainer: sequence log-probs of every response under the policy and
the reference, the pairwise or listwise loss, and the implicit-reward metrics."""

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch

from rlhfkit.data.length_chunks import forward_in_length_chunks
from rlhfkit.data.ranking_batch import RankedGroup, collate_groups, ranking_layout
from rlhfkit.data.shared_prompts import split_at_response
from rlhfkit.models.lora import adapters_disabled
from rlhfkit.objectives.logprobs import sequence_logprobs
from rlhfkit.objectives.masked import masked_sum
from rlhfkit.objectives.preference import (
    DPOLoss,
    dpo_loss,
    implicit_reward_scale,
    implicit_rewards,
    plackett_luce_dpo_loss,
    preference_accuracy,
    reward_margins,
)
from rlhfkit.objectives.ranking import gather_pair_rewards
from rlhfkit.rollout.forward import response_logprobs
from rlhfkit.runtime.device import Precision, autocast, move_batch
from rlhfkit.runtime.distributed import Ranks, gathered, reduce_sums

# (logprobs, ref_logprobs, batch, denominator) -> scalar loss, with the loss settings bound
BatchLoss = Callable[[torch.Tensor, torch.Tensor, dict, float], torch.Tensor]


def make_batch(
    groups: list[RankedGroup], pad_token_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Every response of the groups, padded once, with their pairs (`collate_groups`) and the
    (groups, K) table of the rankings (`ranking_layout`)."""
    return move_batch({**collate_groups(groups, pad_token_id), **ranking_layout(groups)}, device)


def policy_logprobs(model, batch: dict, precision: Precision) -> torch.Tensor:
    """(responses,) log pi(response | prompt), summed over response tokens, with gradient; run in
    length-sorted chunks, so the padding of a batch of unequal responses costs nothing. When
    every group holds K responses to one prompt, the prompt runs once per group (see
    `rollout.forward`): the same log-probs, without K - 1 copies of the prompt's work."""
    rows = {name: batch[name] for name in ("input_ids", "attention_mask", "response_mask")}
    responses, groups = batch["input_ids"].shape[0], batch["best"].shape[0]
    group_size = responses // groups if groups and responses % groups == 0 else 1

    def forward(t: dict) -> torch.Tensor:
        with autocast(t["input_ids"].device, precision):
            if group_size > 1:
                ids, attention, counted, width = split_at_response(
                    t["input_ids"], t["attention_mask"], t["response_mask"]
                )
                logprobs = response_logprobs(
                    model, ids, attention, width, group_size=group_size
                ).logprobs
                return masked_sum(logprobs, counted, dim=-1)
            logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        return sequence_logprobs(logits, t["input_ids"], t["response_mask"])

    return forward_in_length_chunks(
        forward, rows, batch["attention_mask"].sum(dim=1), group_size=group_size
    )


@dataclass
class Reference:
    """log pi_ref of each response: from a frozen model on the fly (a copy of the start, or the
    LoRA policy with its adapters off), or looked up in tables computed once before training.
    Online DPO's refreshed reference is the policy itself, read (without gradient) at each
    refresh."""

    model: torch.nn.Module | None
    adapters_off: bool
    """True: `model` is the LoRA policy, and its base weights are the reference."""
    tables: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """Split name -> per group, the (K,) log-probs of its responses (CPU); empty = on the fly."""

    def in_use(self) -> AbstractContextManager[None]:
        """Around a run of `logprobs` calls: a sharded model gathered once, by the same
        collectives on every rank, whatever number of calls each rank then makes
        (`runtime.distributed.gathered`); nothing to do for tables."""
        return gathered(self.model) if self.model is not None else nullcontext()

    def logprobs(
        self, batch: dict, split: str, rows: list[int], precision: Precision
    ) -> torch.Tensor:
        """(responses,) reference log-probs of the batch of groups `rows` of `split`; a sharded
        model only inside `in_use`."""
        if self.tables:
            return torch.cat([self.tables[split][row] for row in rows]).to(
                batch["input_ids"].device
            )
        return self._forward(batch, precision)

    @torch.no_grad()
    def _forward(self, batch: dict, precision: Precision) -> torch.Tensor:
        with adapters_disabled(self.model) if self.adapters_off else nullcontext():
            return policy_logprobs(self.model, batch, precision)

    def table(
        self,
        groups: list[RankedGroup],
        *,
        pad_token_id: int,
        batch_size: int,
        device: torch.device,
        precision: Precision,
    ) -> list[torch.Tensor]:
        """Per group, the (K,) reference log-probs of its responses (CPU), `batch_size` groups a
        pass (0 = every group in one pass, as online DPO's `micro_batch_size=0`)."""
        table = []
        size = batch_size if batch_size > 0 else max(1, len(groups))
        with self.in_use():
            for start in range(0, len(groups), size):
                chunk = groups[start : start + size]
                values = self._forward(make_batch(chunk, pad_token_id, device), precision).cpu()
                table += list(values.split([len(group.responses) for group in chunk]))
        return table

    def tabulate(
        self,
        splits: dict[str, list[RankedGroup]],
        *,
        pad_token_id: int,
        batch_size: int,
        device: torch.device,
        precision: Precision,
    ) -> None:
        """Compute every response's reference log-prob once, then let go of the model: a frozen
        copy is freed, and training holds no reference at all."""
        for split, groups in splits.items():
            self.tables[split] = self.table(
                groups,
                pad_token_id=pad_token_id,
                batch_size=batch_size,
                device=device,
                precision=precision,
            )
        self.model = None


def _pairwise(logprobs, ref_logprobs, batch, denominator, *, beta, loss_type, label_smoothing):
    winners, losers = batch["winners"], batch["losers"]
    return dpo_loss(
        logprobs[winners],
        logprobs[losers],
        ref_logprobs[winners],
        ref_logprobs[losers],
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        weights=batch["pair_weights"],
        denominator=denominator,
    )


def _listwise(logprobs, ref_logprobs, batch, denominator, *, beta, loss_type, label_smoothing):
    index = batch["ranking_index"]  # (groups, K) positions in the flat responses
    return plackett_luce_dpo_loss(
        logprobs[index],
        ref_logprobs[index],
        batch["ranking_ranks"],
        batch["ranking_mask"],
        beta=beta,
        denominator=denominator,
    )


_BATCH_LOSSES = {
    DPOLoss.SIGMOID: _pairwise,
    DPOLoss.IPO: _pairwise,
    DPOLoss.PLACKETT_LUCE: _listwise,
}


def _with_best_nll(logprobs, ref_logprobs, batch, denominator, *, preference, weight):
    # RPO (Pang et al. 2024): + weight * the per-token NLL of each group's top response, which
    # pulls the policy's mode towards the best answers instead of only away from the worst
    best = batch["best"]
    lengths = batch["response_mask"][best].sum(dim=1).clamp(min=1)
    nll = -(logprobs[best] / lengths).sum() / denominator
    return preference(logprobs, ref_logprobs, batch, denominator) + weight * nll


def batch_loss_fn(
    loss_type: DPOLoss, *, beta: float, label_smoothing: float, nll_weight: float = 0.0
) -> BatchLoss:
    """The loss of one batch: pairwise (each of a ranking's C(K,2) pairs weighted 1/C(K,2), as
    InstructGPT) or Plackett-Luce over each whole ranking; divided by the given group count.
    `nll_weight` > 0 adds that multiple of the top response's per-token NLL (RPO)."""
    loss_type = DPOLoss(loss_type)
    preference = partial(
        _BATCH_LOSSES[loss_type], beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
    )
    if nll_weight == 0:
        return preference
    return partial(_with_best_nll, preference=preference, weight=nll_weight)


def pair_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, batch: dict, beta: float):
    """(chosen, rejected, scale) of every labelled pair, detached: the implicit rewards and the
    size their rounding follows (`pair_outcomes`). The metrics are on the same pairs whichever
    loss trains, so pairwise and listwise runs compare."""
    winners, losers = batch["winners"], batch["losers"]
    logprobs = logprobs.detach()
    rewards = implicit_rewards(logprobs, ref_logprobs, beta)
    chosen, rejected = gather_pair_rewards(rewards, winners, losers)
    scale = implicit_reward_scale(logprobs, ref_logprobs, beta)  # (responses,)
    return chosen, rejected, scale[winners] + scale[losers]


@dataclass
class StepGradients:
    """What one optimizer step's forward and backward passes over its groups give."""

    loss: float
    """The step's loss (its micro-batches' losses summed; each divided by all the step's groups)."""
    metrics: dict[str, float]
    """Implicit-reward metrics over every labelled pair of the step (`reward_metrics`)."""
    logprobs: torch.Tensor
    """(responses,) detached sequence log-probs, micro-batch after micro-batch."""
    tokens: int
    """Real tokens read."""
    pairs: int = 0
    """Labelled pairs the metrics are over."""


def backward_groups(
    policy,
    micro_batches: Iterable[tuple[dict, torch.Tensor]],
    loss_fn: BatchLoss,
    *,
    num_groups: int,
    beta: float,
    precision: Precision,
) -> StepGradients:
    """Accumulate one step's gradient: for each (batch from `make_batch`, its reference
    log-probs), the policy's log-probs, the loss over `num_groups` groups, backward."""
    loss_value, tokens, logprobs_all, pairs, count = 0.0, 0, [], [], 0
    for batch, ref_logprobs in micro_batches:
        logprobs = policy_logprobs(policy, batch, precision)
        loss = loss_fn(logprobs, ref_logprobs, batch, num_groups)
        loss.backward()
        loss_value += loss.item()
        tokens += int(batch["attention_mask"].sum())
        logprobs_all.append(logprobs.detach())
        pairs.append(pair_rewards(logprobs, ref_logprobs, batch, beta))
        count += int(batch["winners"].numel())
    return StepGradients(loss_value, reward_metrics(pairs), torch.cat(logprobs_all), tokens, count)


def zero_weight(loss_fn: BatchLoss) -> BatchLoss:
    """`loss_fn` times zero: a pass that only takes part in the step's collectives (a rank
    without groups in a step runs one at this weight)."""
    return lambda *args: loss_fn(*args) * 0.0


def reduced_gradients(
    step_grads: StepGradients, stand_in: bool, ranks: Ranks
) -> tuple[float, int, dict[str, float]]:
    """The step's loss, tokens and pair metrics over every rank: losses and tokens add up, the
    metrics are means over all the step's pairs (`stand_in`: this rank's pass counts for
    nothing; one process: unchanged)."""
    if not ranks.sharded:
        return step_grads.loss, step_grads.tokens, step_grads.metrics
    pairs = 0 if stand_in else step_grads.pairs
    sums = reduce_sums(
        {
            "loss": step_grads.loss,
            "tokens": 0 if stand_in else step_grads.tokens,
            "pairs": pairs,
            **{key: value * pairs for key, value in step_grads.metrics.items()},
        },
        ranks,
    )
    loss, tokens, total = sums.pop("loss"), int(sums.pop("tokens")), sums.pop("pairs")
    return loss, tokens, {key: value / max(total, 1) for key, value in sums.items()}


def reward_metrics(pairs: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
    """Mean rewards, margin and accuracy over the (chosen, rejected, scale) of `pair_rewards`."""
    chosen, rejected, scale = (torch.cat(parts) for parts in zip(*pairs))
    return {
        "rewards_chosen": chosen.mean().item(),
        "rewards_rejected": rejected.mean().item(),
        "margin": reward_margins(chosen, rejected).mean().item(),
        "accuracy": preference_accuracy(chosen, rejected, scale=scale).item(),
    }


@torch.no_grad()
def evaluate_dpo(
    policy,
    reference: Reference,
    groups: list[RankedGroup],
    loss_fn: BatchLoss,
    *,
    beta: float,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    precision: Precision,
) -> dict[str, float]:
    """Held-out loss (mean over groups) and implicit-reward metrics over all held-out pairs."""
    policy.eval()
    loss, pairs = 0.0, []
    with reference.in_use():
        for start in range(0, len(groups), batch_size):
            rows = list(range(start, min(start + batch_size, len(groups))))
            batch = make_batch([groups[row] for row in rows], pad_token_id, device)
            logprobs = policy_logprobs(policy, batch, precision)
            ref_logprobs = reference.logprobs(batch, "eval", rows, precision)
            loss += loss_fn(logprobs, ref_logprobs, batch, len(groups)).item()
            pairs.append(pair_rewards(logprobs, ref_logprobs, batch, beta))
    policy.train()
    return {"loss": loss, **reward_metrics(pairs)}
