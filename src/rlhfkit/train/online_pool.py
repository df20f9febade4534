"""The labelled samples an online DPO run trains on between two refreshes, and its plan.

Every T steps (T = 1: every batch) the trainer samples K responses to the prompts of the next T
steps, has them ranked, and assembles a pool: for each of those steps, its ranked groups (the
online ones first, then the offline rows of a hybrid run) with their reference log-probs. A
checkpoint holds the pool as plain data (`pool_state`: token lists, ranks, numbers and tensors),
so a run killed between two refreshes resumes on the very samples and labels it had.
"""

from dataclasses import dataclass

import torch

from rlhfkit.data.ranking_batch import RankedGroup
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.human import Ranks
from rlhfkit.objectives.ranking import ranking_comparisons
from rlhfkit.rollout.engine import Rollout
from rlhfkit.rollout.text import response_token_ids
from rlhfkit.train.batching import stream_rows
from rlhfkit.train.dpo_losses import Reference


def online_plan(
    *, max_steps: int, online_per_step: int, samples_per_prompt: int, label_budget: int
) -> list[int]:
    """Online prompts labelled for each step: `online_per_step` until the budget (pairwise
    comparisons, C(K,2) per prompt; 0 = none) cannot pay for a whole batch; one last smaller
    batch takes what is left; the run has as many steps as the list is long."""
    if label_budget <= 0:
        return [online_per_step] * max_steps
    affordable = label_budget // ranking_comparisons(samples_per_prompt)
    full, rest = divmod(affordable, online_per_step)
    return ([online_per_step] * full + ([rest] if rest else []))[:max_steps]


def spread_ranked(rankings: list[Ranks | None], plan: list[int]) -> tuple[list[int], list[int]]:
    """The prompts to train on and how many each step of the refresh takes: every prompt and
    the plan, unless some were skipped (no preference, dropped); then the ranked ones are spread
    over the steps as evenly as they go, the first steps taking one more."""
    kept = [index for index, ranks in enumerate(rankings) if ranks is not None]
    if len(kept) == len(rankings):
        return kept, plan
    if len(kept) < len(plan):
        raise RlhfkitError(
            f"{len(kept)} of {len(rankings)} prompts of a refresh have a preference (the rest "
            f"were skipped, or all their responses tied), fewer than its {len(plan)} steps: "
            "with labeller=human, people can undo some skips and rerun with --resume; a "
            "labeller that ties every response of most prompts gives DPO nothing to learn"
        )
    size, extra = divmod(len(kept), len(plan))
    return kept, [size + (step < extra) for step in range(len(plan))]


def rollout_examples(rollout: Rollout) -> list[EncodedExample]:
    """Each sampled row as prompt + response tokens, padding removed, the response marked as
    the completion (stop token included): the very tokens sampled, never re-tokenised text."""
    responses = response_token_ids(rollout)
    examples = []
    for prompt_ids, prompt_mask, response, finished in zip(
        rollout.prompt_ids.tolist(),
        rollout.prompt_mask.tolist(),
        responses,
        rollout.finished.tolist(),
    ):
        prompt = [token for token, real in zip(prompt_ids, prompt_mask) if real]
        examples.append(
            EncodedExample(
                prompt + response,
                [False] * len(prompt) + [True] * len(response),
                truncated=not finished,
            )
        )
    return examples


def group_from_ranks(examples: list[EncodedExample], ranks: tuple[int, ...]) -> RankedGroup:
    """One prompt's samples best first, tied ones in sampling order, with their ranks."""
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    return RankedGroup([examples[i] for i in order], tuple(ranks[i] for i in order))


@dataclass
class StepGroups:
    """What one step trains on."""

    groups: list[RankedGroup]
    """The online groups first, then the offline ones."""
    ref_logprobs: list[torch.Tensor]
    """Per group, the (K,) sequence log-probs of its responses under the reference (CPU)."""
    online: int
    """How many of `groups` were sampled and labelled online."""
    samples: dict[str, float]
    """Metrics of the online samples: reward, length, and the gold score when a task is named."""


@dataclass
class Pool:
    start: int
    """The first step the pool serves."""
    steps: list[StepGroups]

    def covers(self, step: int) -> bool:
        return self.start <= step < self.start + len(self.steps)

    def at(self, step: int) -> StepGroups:
        return self.steps[step - self.start]


def pool_state(pool: Pool) -> dict:
    """The pool as plain data for a checkpoint (lists, numbers and tensors, no objects);
    `pool_from_state` rebuilds it."""

    def group(g: RankedGroup) -> dict:
        responses = [
            {
                "input_ids": list(e.input_ids),
                "completion_mask": list(e.completion_mask),
                "truncated": e.truncated,
            }
            for e in g.responses
        ]
        return {"responses": responses, "ranks": list(g.ranks), "margin": g.margin}

    steps = [
        {
            "groups": [group(g) for g in step.groups],
            "ref_logprobs": list(step.ref_logprobs),
            "online": step.online,
            "samples": dict(step.samples),
        }
        for step in pool.steps
    ]
    return {"start": pool.start, "steps": steps}


def pool_from_state(state: dict) -> Pool:
    """The pool `pool_state` wrote."""

    def group(g: dict) -> RankedGroup:
        responses = [
            EncodedExample(e["input_ids"], e["completion_mask"], e["truncated"])
            for e in g["responses"]
        ]
        return RankedGroup(responses, tuple(g["ranks"]), g["margin"])

    steps = [
        StepGroups(
            [group(g) for g in step["groups"]],
            list(step["ref_logprobs"]),
            step["online"],
            dict(step["samples"]),
        )
        for step in state["steps"]
    ]
    return Pool(state["start"], steps)


def sample_metrics(
    gold: list[float] | None, rewards: list[float] | None, lengths: list[int]
) -> dict[str, float]:
    """The online samples' mean reward (None: no reward), length and token count, and gold score
    (None: no task)."""
    metrics = {"gold_score": sum(gold) / len(gold)} if gold is not None else {}
    if rewards is not None:
        metrics["reward_mean"] = sum(rewards) / len(rewards)
    return {
        **metrics,
        "response_length": sum(lengths) / len(lengths),
        "response_tokens": int(sum(lengths)),  # a count, as the other trainers log it
    }


def assemble_pool(
    *,
    start: int,
    plan: list[int],
    samples_per_prompt: int,
    online_groups: list[RankedGroup],
    gold: list[float] | None,
    rewards: list[float] | None,
    offline: list[RankedGroup],
    offline_per_step: int,
    seed: int,
    reference: Reference,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    precision,
) -> Pool:
    """Split the labelled groups into the steps `start, start + 1, ...` that `plan` sizes, add
    each step's offline rows (a pure function of (seed, step)), and compute every response's
    reference log-prob once.

    Args:
        gold, rewards: one per online response, in sampling order (prompt-major); gold None
            without a task, rewards None without a reward.
        offline: the offline groups of a hybrid run (empty otherwise).
    """
    steps, first = [], 0
    for step in range(start, start + len(plan)):
        count = plan[step - start]
        online = online_groups[first : first + count]
        rows = (
            stream_rows(len(offline), offline_per_step, seed, step)
            if offline and offline_per_step
            else []
        )
        responses = slice(first * samples_per_prompt, (first + count) * samples_per_prompt)
        lengths = [
            sum(group.responses[j].completion_mask)
            for group in online
            for j in range(samples_per_prompt)
        ]
        steps.append(
            StepGroups(
                online + [offline[row] for row in rows],
                [],
                count,
                sample_metrics(
                    gold[responses] if gold is not None else None,
                    rewards[responses] if rewards is not None else None,
                    lengths,
                ),
            )
        )
        first += count
    everything = [group for step in steps for group in step.groups]
    table = iter(
        reference.table(
            everything,
            pad_token_id=pad_token_id,
            batch_size=batch_size,
            device=device,
            precision=precision,
        )
    )
    for step in steps:
        step.ref_logprobs = [next(table) for _ in step.groups]
    return Pool(start, steps)
