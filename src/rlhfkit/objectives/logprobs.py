"""Token and sequence log-probabilities from logits."""

import torch
import torch.nn.functional as F

from rlhfkit.objectives.masked import masked_sum


def _wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the half-precision types, otherwise the type itself (float64 stays float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(_wide_dtype(x.dtype))


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_ids) under softmax(logits), without a full log-softmax copy.

    Args:
        logits: (batch, seq, vocab) unnormalised scores for each position.
        token_ids: (batch, seq) the token whose log-probability is wanted at each position.
    Returns:
        (batch, seq) log-probabilities, float32 or the logits' dtype if wider.

    Naive equivalent: `logits.log_softmax(-1).gather(-1, token_ids[..., None]).squeeze(-1)`.
    Computed as the negated cross-entropy: one fused log-softmax whose backward is one fused
    kernel too. `chosen - logsumexp(logits)` keeps the same tensors for the backward but runs
    it as several separate passes over (batch, seq, vocab): 3x slower for a GRPO step's logits on
    a CPU.
    """
    logits = _wide(logits)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), token_ids.reshape(-1), reduction="none"
    )
    return -nll.view(token_ids.shape)


def shift_for_next_token(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor):
    """Align position t's logits with token t+1, the token they predict.

    Args:
        logits: (batch, seq, vocab); input_ids: (batch, seq);
        mask: (batch, seq) bool over input_ids.
    Returns:
        logits (batch, seq-1, vocab), targets (batch, seq-1), target mask (batch, seq-1).
    """
    return logits[:, :-1], input_ids[:, 1:], mask[:, 1:]


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(response | prompt) = sum over response tokens of log p(x_t | x_<t) (DPO's sequence
    log-prob).

    Args:
        logits: (batch, seq, vocab) model outputs for `input_ids` (right padding is fine).
        input_ids: (batch, seq) prompt then response tokens.
        response_mask: (batch, seq) bool over `input_ids`, True = a response token that counts
            (prompt and padding are False).
    Returns:
        (batch,) summed log-probabilities, float32 or the logits' dtype if wider; 0 for a row
        without response tokens.
    """
    logits, targets, mask = shift_for_next_token(logits, input_ids, response_mask)
    return masked_sum(token_logprobs(logits, targets), mask, dim=-1)


def token_logprobs_and_entropy(
    logits: torch.Tensor, token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` and `entropy_from_logits` of the same logits from one log-softmax.

    Args:
        logits: (batch, seq, vocab); token_ids: (batch, seq).
    Returns:
        (batch, seq) log-probs with gradient (the same floats as `token_logprobs`: cross-entropy
        is this log-softmax and negative log-likelihood), and (batch, seq) entropies without.

    The entropy is a metric: computing it from the logits again costs three more passes over
    them (15 ms of a 64 x 32 x 2048 GRPO pass on a 2-core CPU, against 4 ms from here).
    """
    log_probs = _wide(logits).log_softmax(dim=-1)
    nll = F.nll_loss(
        log_probs.reshape(-1, log_probs.shape[-1]), token_ids.reshape(-1), reduction="none"
    )
    with torch.no_grad():
        entropy = _entropy(log_probs)
    return -nll.view(token_ids.shape), entropy


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H = -sum_v p_v log p_v of softmax(logits) at every position.

    Args:
        logits: (batch, seq, vocab) unnormalised scores.
    Returns:
        (batch, seq) entropies in nats, float32 or the logits' dtype if wider.

    Naive equivalent: `-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)`; here p_v is
    exp of the log-softmax, so one (batch, seq, vocab) tensor is computed, not two. Masked
    tokens (logit -inf: top-k, suppressed tokens) have p_v = 0 and add nothing, as in the
    naive form's limit; softmax([0, 0, -inf]) has entropy ln 2.
    """
    return _entropy(_wide(logits).log_softmax(dim=-1))


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """-sum_v p_v log p_v over the last dim of log-probabilities. A -inf log p_v has p_v = 0 and
    its term must be 0, not 0 * -inf = nan: it is clamped to the lowest float."""
    finite = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)
    return -(log_probs.exp() * finite).sum(-1)


def head_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk of `head_logprobs`: about 2^20 logits (4 MB in float32), so one chunk's
    logits stay in cache, and never fewer than 16 rows (the loop's overhead)."""
    return max(16, (1 << 20) // vocab_size)


class _HeadLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / T)[target] chunk by chunk, the logits recomputed in the
    backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk, with_entropy):
        wide = _wide_dtype(hidden.dtype)
        logprobs = hidden.new_empty(hidden.shape[0], dtype=wide)
        entropy = hidden.new_empty(hidden.shape[0] if with_entropy else 0, dtype=wide)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _wide(hidden[rows] @ weight.T) / temperature
            lse = torch.logsumexp(logits, dim=-1)
            logprobs[rows] = logits.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1) - lse
            if with_entropy:
                entropy[rows] = _entropy(logits - lse.unsqueeze(-1))
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros_like(weight, dtype=_wide_dtype(weight.dtype))
            if ctx.needs_input_grad[1]
            else None
        )
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            logits = _wide(hidden[rows] @ weight.T) / ctx.temperature
            # d log p[target] / d logits = onehot(target) - softmax(logits)
            grad_logits = torch.softmax(logits, dim=-1).mul_(-grad_logprobs[rows].unsqueeze(-1))
            grad_logits.scatter_add_(
                -1, targets[rows].unsqueeze(-1), grad_logprobs[rows].unsqueeze(-1)
            )
            grad_logits = (grad_logits / ctx.temperature).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad_logits @ weight.to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += _wide(grad_logits.T @ hidden[rows])
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None,
            None,
            None,
            None,
        )


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of `targets` under softmax(hidden @ weight.T / temperature),
    without ever holding all the logits: a (rows, vocab) logits tensor is what dominates the memory
    and the memory traffic of a long response (64 x 512 x 2048 floats: 268 MB, and the log-softmax
    and its gradient pass over it several times). Chunks of rows are computed and dropped, and
    recomputed in the backward; the gradients are those of the plain form.

    Args:
        hidden: (rows, d) final hidden states; weight: (vocab, d) the LM head (no bias, no scaling).
        targets: (rows,) the token each row predicts; temperature: logits are divided by it.
        with_entropy: also the entropy of each row's distribution (no gradient).
        chunk: rows per chunk (0 = `head_chunk_rows`).
    Returns:
        (rows,) log-probs (float32, or float64 for float64 inputs) with gradient to hidden and
        weight; (rows,) entropies or None.

    Naive equivalent: `token_logprobs(hidden @ weight.T / temperature, targets)` and
    `entropy_from_logits` of the same logits.
    """
    chunk = chunk or head_chunk_rows(weight.shape[0])
    logprobs, entropy = _HeadLogprobs.apply(
        hidden, weight, targets, float(temperature), chunk, with_entropy
    )
    return logprobs, entropy if with_entropy else None
