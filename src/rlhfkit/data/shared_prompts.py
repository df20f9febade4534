"""Batches whose rows come in groups that share one prompt (GRPO's G samples, a ranking's K
responses): the check that they do, and the layout that separates prompts from responses, so
that a forward pass can run each distinct prompt once (`rollout.forward`, `models.reward`)."""

import torch


def response_starts(response_mask: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """Each row's first response token (its length when it has none): where its prompt ends."""
    lengths = attention_mask.sum(dim=1).tolist()
    return [
        int(row.nonzero()[0]) if row.any() else length
        for row, length in zip(response_mask, lengths)
    ]


def common_prefix_starts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, group_size: int
) -> list[int]:
    """Per row, the length of the longest token prefix its whole group shares, kept one token
    short of the group's shortest row (so every row keeps a token after it).

    A pair whose rejected answer differs from the chosen one only near its end (an edited
    step, a wrong final number) shares far more than its prompt; the forward pass of a reward
    model reads only the last token, so all of that shared part can run once.
    """
    lengths = attention_mask.sum(dim=1)
    starts = []
    for first in range(0, input_ids.shape[0], group_size):
        rows, shortest = (
            input_ids[first : first + group_size],
            int(lengths[first : first + group_size].min()),
        )
        same = (rows[:, :shortest] == rows[:1, :shortest]).all(dim=0)
        shared = int(same.long().cumprod(dim=0).sum())
        starts += [min(shared, shortest - 1)] * rows.shape[0]
    return starts


def split_at_response(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    starts: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Right-padded prompt+response rows in the rollout's layout: prompts left-padded, then
    responses right-padded, so that `response_logprobs` (and its shared-prompt path) applies.

    The prompt of a row is everything before `starts[row]` (default: its first response token).
    Returns:
        input_ids, attention_mask (batch, prompt_len + response_len), counted (batch,
        response_len) bool = the response tokens that count, and response_len.
    """
    lengths = attention_mask.sum(dim=1).tolist()
    starts = response_starts(response_mask, attention_mask) if starts is None else starts
    prompt_len = max(starts)
    response_len = max(1, max(length - start for start, length in zip(starts, lengths)))
    rows = input_ids.shape[0]
    ids = input_ids.new_zeros((rows, prompt_len + response_len))
    attention = torch.zeros(
        (rows, prompt_len + response_len), dtype=torch.bool, device=input_ids.device
    )
    counted = torch.zeros((rows, response_len), dtype=torch.bool, device=input_ids.device)
    for row, (start, length) in enumerate(zip(starts, lengths)):
        ids[row, prompt_len - start : prompt_len] = input_ids[row, :start]
        ids[row, prompt_len : prompt_len + length - start] = input_ids[row, start:length]
        attention[row, prompt_len - start : prompt_len + length - start] = True
        counted[row, : length - start] = response_mask[row, start:length]
    return ids, attention, counted, response_len


def shares_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int) -> bool:
    """Whether rows [k*G, (k+1)*G) hold the same prompt (ids and padding) for every k."""
    rows = prompt_ids.shape[0]
    if rows % group_size or prompt_ids.shape[1] == 0:
        return False
    shape = (rows // group_size, group_size, -1)
    return bool(
        (prompt_ids.view(shape) == prompt_ids[::group_size].unsqueeze(1)).all()
        and (prompt_mask.view(shape) == prompt_mask[::group_size].unsqueeze(1)).all()
    )
