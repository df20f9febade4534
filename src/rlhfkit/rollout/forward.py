"""Log-probs (and entropy) of a rollout's response tokens under a model, in one forward pass.

The training-side twin of `engine.generate`: the same positions (left padding skipped) and
the same tempered distribution, so on an unchanged model both give the same log-probs.
"""

from typing import NamedTuple

import torch

from rlhfkit.objectives.logprobs import entropy_from_logits, token_logprobs
from rlhfkit.rollout.engine import positions_from_mask


class ResponseLogprobs(NamedTuple):
    logprobs: torch.Tensor  # (batch, response_len) log-prob of each response token
    entropy: torch.Tensor | None  # (batch, response_len) entropy of the tempered distribution, or None


def response_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> ResponseLogprobs:
    """log softmax(logits / T) of the last `response_len` tokens of each row.

    Args:
        model: a causal LM; gradients flow unless the caller disables them.
        input_ids, attention_mask: (batch, prompt_len + response_len) prompt then response
            (`Rollout.input_ids`, `Rollout.attention_mask`).
        response_len: how many trailing columns are the response.
        temperature: the sampling temperature, so the ratio to the sampling log-probs is exact.
        with_entropy: also return the per-token entropy (a metric; no gradient needed).
    Returns:
        ResponseLogprobs with (batch, response_len) tensors; values at masked positions are
        finite but meaningless.
    """
    # The logits of position t predict token t + 1: the response needs the last response_len + 1
    # positions except the very last, so the LM head runs on those only.
    out = model(input_ids=input_ids, attention_mask=attention_mask.long(),
                position_ids=positions_from_mask(attention_mask), logits_to_keep=response_len + 1)
    logits = out.logits[:, :-1].float() / temperature
    logprobs = token_logprobs(logits, input_ids[:, -response_len:])
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits)
    return ResponseLogprobs(logprobs, entropy)


def response_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's head at the position that predicts token t.

    Args:
        critic: a `RewardModel` (backbone + one scalar head), e.g. started from the reward model.
        input_ids, attention_mask: (batch, prompt_len + response_len), as in `response_logprobs`.
        response_len: how many trailing columns are the response.
    Returns:
        (batch, response_len) values; meaningless (but finite) where the response is padding.
    """
    hidden = critic.backbone(input_ids=input_ids, attention_mask=attention_mask.long(),
                      position_ids=positions_from_mask(attention_mask)).last_hidden_state
    # state s_t is the prefix before token t: the same positions whose logits sample token t
    return critic.token_scores(hidden[:, -response_len - 1 : -1]).squeeze(-1).float()
