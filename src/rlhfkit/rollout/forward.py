"""Log-probs (and entropy) of a rollout's response tokens under a model, in one forward pass.

The training-side twin of `engine.generate`: the same positions (left padding skipped) and
the same tempered distribution, so on an unchanged model both give the same log-probs.

When G responses share each prompt (GRPO, RLOO), `group_size=G` runs each prompt once and
lets its G responses attend to the prompt's keys and values (repeated, with their gradient),
instead of running the prompt G times. The prompt's hidden states do not depend on what
follows it (causal attention), so the log-probs and gradients are those of the full forward
pass, to float rounding; the prompt's share of the work drops by a factor G.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from rlhfkit.data.shared_prompts import shares_prompts
from rlhfkit.objectives.logprobs import (
    head_logprobs,
    token_logprobs,
    token_logprobs_and_entropy,
)
from rlhfkit.rollout.architecture import linear_head
from rlhfkit.rollout.engine import positions_from_mask

# Logits at least this large (64 MB in float32: 64 responses of 512 tokens over a 2,048-token
# vocabulary hold 67M) go through the chunked LM head; below it, holding them costs less than
# the chunked loop (measured: equal at 64 x 32 tokens, 2.5% slower on the DPO pairs).
CHUNKED_HEAD_MIN_LOGITS = 1 << 24


def is_checkpointing(model) -> bool:
    """Whether activation checkpointing is on (`models.loading.enable_checkpointing`)."""
    base = getattr(model, "get_base_model", lambda: model)()  # a LoRA model's own model
    return bool(getattr(base, "is_activation_checkpointing", False))


class ResponseLogprobs(NamedTuple):
    logprobs: torch.Tensor  # (batch, response_len) log-prob of each response token
    # (batch, response_len) entropy of the tempered distribution, or None
    entropy: torch.Tensor | None


def response_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    group_size: int = 1,
) -> ResponseLogprobs:
    """log softmax(logits / T) of the last `response_len` tokens of each row.

    Args:
        model: a causal LM; gradients flow unless the caller disables them.
        input_ids, attention_mask: (batch, prompt_len + response_len) prompt then response
            (`Rollout.input_ids`, `Rollout.attention_mask`).
        response_len: how many trailing columns are the response.
        temperature: the sampling temperature, so the ratio to the sampling log-probs is exact.
        with_entropy: also return the per-token entropy (a metric; no gradient needed).
        group_size: rows [k*G, (k+1)*G) share one prompt: each prompt runs once (see the module
            docstring). Rows that do not form such groups take the plain path.
    Returns:
        ResponseLogprobs with (batch, response_len) tensors; values at masked positions are
        finite but meaningless.
    """
    # activation checkpointing drops the cache that carries a shared prompt to its responses
    shared = (
        group_size > 1
        and not is_checkpointing(model)
        and shares_prompts(
            input_ids[:, :-response_len], attention_mask[:, :-response_len], group_size
        )
    )
    targets = input_ids[:, -response_len:]
    group = group_size if shared else 1
    decoder, head = linear_head(model) or (None, None)
    if head is None:
        logits = _response_states(
            model, input_ids, attention_mask, response_len, group, hidden=False
        )
    else:
        # the hidden states, then the head: a grouped pass joins its two parts and a plain one
        # drops the last position on the (rows, response_len, d) states rather than on the
        # logits, vocab / d times larger (a join or a strided slice of them costs a copy)
        states = _response_states(
            decoder, input_ids, attention_mask, response_len, group, hidden=True
        )
        if targets.numel() * head.shape[0] >= CHUNKED_HEAD_MIN_LOGITS:
            return _chunked_head(states, head, targets, temperature, with_entropy)
        logits = F.linear(states, head)
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    if with_entropy:
        return ResponseLogprobs(*token_logprobs_and_entropy(logits, targets))
    return ResponseLogprobs(token_logprobs(logits, targets), None)


def _chunked_head(
    states: torch.Tensor,
    head: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> ResponseLogprobs:
    """The head applied chunk by chunk to (rows, width, d) `states` (`head_logprobs`)."""
    rows, width, size = states.shape
    device_type = states.device.type
    if torch.is_autocast_enabled(device_type):
        # autocast does not reach into the chunk loop's own backward: run the head's matmuls in
        # the autocast dtype by hand (the gradient flows back to the fp32 head through the
        # cast), reductions in float32 as the plain path does
        dtype = torch.get_autocast_dtype(device_type)
        states, head = states.to(dtype), head.to(dtype)
    with torch.autocast(device_type, enabled=False):
        logprobs, entropy = head_logprobs(
            states.reshape(-1, size), head, targets.reshape(-1), temperature, with_entropy
        )
    return ResponseLogprobs(
        logprobs.view(rows, width), None if entropy is None else entropy.view(rows, width)
    )


def _response_states(
    model, input_ids, attention_mask, response_len: int, group_size: int, *, hidden: bool
) -> torch.Tensor:
    """(batch, response_len, vocab) logits, or with `hidden` the (batch, response_len, d) last
    hidden states of a base model, at the positions that predict the response tokens."""

    def run(**inputs):
        out = model(**inputs)
        return out.last_hidden_state if hidden else out.logits

    if group_size == 1:
        # position t predicts token t + 1: the last response_len + 1 positions but the very last
        # (the LM head runs on those only)
        keep = {} if hidden else {"logits_to_keep": response_len + 1}
        states = run(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            position_ids=positions_from_mask(attention_mask),
            **keep,
        )
        return states[:, -response_len - 1 : -1]
    prompt_len = input_ids.shape[1] - response_len
    prompt_ids, prompt_mask = (
        input_ids[::group_size, :prompt_len],
        attention_mask[::group_size, :prompt_len],
    )
    # step 1. the distinct prompts; their last position predicts the first response token
    cache = DynamicCache()
    keep = {} if hidden else {"logits_to_keep": 1}
    first = run(
        input_ids=prompt_ids,
        attention_mask=prompt_mask.long(),
        position_ids=positions_from_mask(prompt_mask),
        past_key_values=cache,
        use_cache=True,
        **keep,
    )[:, -1:].repeat_interleave(group_size, dim=0)
    if response_len == 1:
        return first
    # step 2. every response (but its last token, which predicts nothing) on its prompt's keys
    # and values
    cache.batch_repeat_interleave(group_size)
    positions = attention_mask[:, :prompt_len].sum(dim=1, keepdim=True) + torch.arange(
        response_len - 1, device=input_ids.device
    )
    rest = run(
        input_ids=input_ids[:, prompt_len:-1],
        attention_mask=attention_mask[:, :-1].long(),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([first, rest], dim=1)


def response_values(
    critic, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int
) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's head at the position that predicts token t.

    Args:
        critic: a `RewardModel` (backbone + one scalar head), e.g. started from the reward model.
        input_ids, attention_mask: (batch, prompt_len + response_len), as in `response_logprobs`.
        response_len: how many trailing columns are the response.
    Returns:
        (batch, response_len) values; meaningless (but finite) where the response is padding.
    """
    hidden = critic.backbone(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        position_ids=positions_from_mask(attention_mask),
    ).last_hidden_state
    # state s_t is the prefix before token t: the same positions whose logits sample token t
    return critic.token_scores(hidden[:, -response_len - 1 : -1]).squeeze(-1).float()
