"""Batches whose rows come in groups that share one prompt (GRPO's G samples, a ranking's K
responses): the check that they do, and the layout that separates prompts from responses, so
that a forward pass can run each distinct prompt once (`rollout.forward`, `models.reward`)."""

import torch


def split_at_response(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Right-padded prompt+response rows in the rollout's layout: prompts left-padded, then
    responses right-padded, so that `response_logprobs` (and its shared-prompt path) applies.

    The prompt of a row is everything before its first response token.
    Returns:
        input_ids, attention_mask (batch, prompt_len + response_len), counted (batch,
        response_len) bool = the response tokens that count, and response_len.
    """
    lengths = attention_mask.sum(dim=1).tolist()
    starts = [int(row.nonzero()[0]) if row.any() else length for row, length in zip(response_mask, lengths)]
    prompt_len = max(starts)
    response_len = max(1, max(length - start for start, length in zip(starts, lengths)))
    rows = input_ids.shape[0]
    ids = input_ids.new_zeros((rows, prompt_len + response_len))
    attention = torch.zeros((rows, prompt_len + response_len), dtype=torch.bool, device=input_ids.device)
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
    return bool((prompt_ids.view(shape) == prompt_ids[::group_size].unsqueeze(1)).all()
                and (prompt_mask.view(shape) == prompt_mask[::group_size].unsqueeze(1)).all())
