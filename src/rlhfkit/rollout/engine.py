"""Sampling with a KV cache for RL: token ids, `response_mask` and the sampling log-probs.

An own loop instead of `model.generate`, for three reasons: it returns the log-probability of
every sampled token (so an on-policy step needs no second forward pass for `old_logprobs`), it
prefills each prompt once for all of its samples (GRPO's G samples share the prompt's cache),
rows that have stopped are dropped from the batch and its cache so they stop costing work, and
the cache is allocated once instead of growing by concatenation (`kv_cache`).
"""

from dataclasses import dataclass

import torch

from rlhfkit.objectives.logprobs import token_logprobs
from rlhfkit.rollout.architecture import supports_fast_decode, warn_past_positions
from rlhfkit.rollout.decode_graphs import BucketedSteps, steps_for
from rlhfkit.rollout.kv_cache import preallocated_cache
from rlhfkit.rollout.llama_step import FastDecoder, packs_weights
from rlhfkit.runtime.device import warn_if_bf16_emulated

# Drop finished rows once this share of the batch has stopped: selecting the cache copies it,
# so compacting at every stop would cost more than the rows it saves.
COMPACT_WHEN_FINISHED = 0.25


@dataclass
class Rollout:
    """One batch of sampled responses. Row i * num_samples + j is sample j of prompt i."""

    prompt_ids: torch.Tensor  # (batch, prompt_len) left-padded
    prompt_mask: torch.Tensor  # (batch, prompt_len) bool, True = a real prompt token
    response_ids: torch.Tensor  # (batch, response_len) right-padded with pad_token_id
    # (batch, response_len) bool, True = a sampled token (the stop token included)
    response_mask: torch.Tensor
    # (batch, response_len) log-prob of each sampled token under softmax(logits / T); 0 where masked
    logprobs: torch.Tensor
    # (batch,) bool, True = stopped at a stop token (False = cut at max_new_tokens)
    finished: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        """(batch, prompt_len + response_len) prompt then response, for a training forward pass."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(batch, prompt_len + response_len) bool: real prompt tokens and sampled tokens."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)


@dataclass(frozen=True)
class DrawRows:
    """Rows `first` .. `first + count - 1` of a batch of `total` rows whose sampling noise comes
    from one generator: `generate` draws `total` uniforms per step and keeps these rows'."""

    first: int
    total: int


def _draw(generator, device, rows: DrawRows) -> torch.Tensor:
    """One step's uniforms of the whole batch, from `rows.first` on (the caller keeps its own)."""
    return torch.rand(rows.total, generator=generator, device=device)[rows.first :]


def skip_draws(generator, device, total: int, steps: int) -> None:
    """Advance `generator` past `steps` decoding steps of a `total`-row batch without decoding:
    a share of the batch whose rows all stopped early draws what the longest share drew, so the
    generator leaves the batch in the same state however it was split."""
    for _ in range(steps):
        torch.rand(total, generator=generator, device=device)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set of mass >= top_p.

    Args:
        logits: (batch, vocab) already divided by the temperature.
        top_k: keep the k largest (0 = all); top_p: nucleus mass in (0, 1] (1 = all).
    Returns:
        (batch, vocab) filtered logits; the most likely token always survives.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        mass_before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
        drop_sorted = mass_before >= top_p  # tokens whose predecessors already reach top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def _choose(
    logits: torch.Tensor, greedy: bool, top_k: int, top_p: float, uniforms: torch.Tensor
) -> torch.Tensor:
    """One token per row by inverting the CDF at a uniform draw per row.

    Each row has its own draw, taken for the whole batch every step, so a row's sample does
    not depend on which other rows are still in the batch (unlike `torch.multinomial`, whose
    draws shift when finished rows are dropped).
    """
    if greedy:
        return logits.argmax(dim=-1)
    cdf = filter_logits(logits, top_k, top_p).softmax(dim=-1).cumsum(dim=-1)
    # right=True skips zero-probability tokens (a flat stretch of the CDF)
    token = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return token.clamp(max=logits.shape[-1] - 1)


class CacheSteps:
    """The one-token steps on the prefill's cache, through the fast decoder where it applies
    (`llama_step`), else through the model (`model_step`). Same interface as
    `decode_graphs.BucketedSteps`."""

    def __init__(self, cache, decoder: FastDecoder | None, model_step):
        self.cache, self.decoder, self.model_step = cache, decoder, model_step

    def should_compact(self, active: torch.Tensor) -> bool:
        return bool((~active).sum() >= COMPACT_WHEN_FINISHED * active.numel())

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)

    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention: torch.Tensor
    ) -> torch.Tensor:
        if self.decoder is not None:
            return self.decoder.decode_step(tokens, positions, attention, self.cache)
        return self.model_step(
            input_ids=tokens.unsqueeze(1),
            attention_mask=attention,
            position_ids=positions.unsqueeze(1),
        )


def _one_token_steps(
    model,
    dtype: torch.dtype | None,
    capacity: int,
    rows: int,
    *,
    fast_decode: bool,
    compiled: bool,
    cuda_graphs: bool | None,
    pack_weights: bool | None,
    device: torch.device,
) -> tuple[FastDecoder | None, BucketedSteps | None]:
    """How `generate`'s one-token steps run, as (decoder, buckets) (see its arguments of the same
    names): `decode_graphs` steps at fixed batch sizes and the decoder they replay; or the fast
    decoder alone (`llama_step`; `rows` rows a step, its weights packed where they are); or
    (None, None), through the model."""
    if not (fast_decode and supports_fast_decode(model, capacity)):
        return None, None
    on_cuda = device.type == "cuda"
    if not compiled and (on_cuda if cuda_graphs is None else cuda_graphs):
        buckets = steps_for(model, dtype, capacity, capture=on_cuda)
        return buckets.decoder, buckets
    if pack_weights is None:
        pack_weights = packs_weights(model, device, dtype)
    packed = pack_weights and not compiled and device.type == "cpu"
    return FastDecoder(model, dtype, compiled, pack_rows=rows if packed else 0), None


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    num_samples: int,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    fast_decode: bool = True,
    dtype: torch.dtype | None = None,
    compiled: bool = False,
    draw_rows: DrawRows | None = None,
    cuda_graphs: bool | None = None,
    pack_weights: bool | None = None,
    longest_prompt: int | None = None,
) -> Rollout:
    """Sample `num_samples` responses to each left-padded prompt.

    Args:
        model: a causal LM (any `AutoModelForCausalLM`), put in eval mode by the caller.
        prompt_ids, prompt_mask: (prompts, prompt_len) left-padded ids and bool mask.
        stop_ids: tokens that end a response (kept in it, with their log-prob).
        temperature: sampling and log-probs use softmax(logits / temperature); top-k and top-p
            only restrict which tokens can be drawn, the log-probs stay those of the full
            tempered distribution, the policy that the losses differentiate.
        greedy: argmax decoding; log-probs are then those of softmax(logits).
        generator: the torch RNG to draw from (seeded by the caller, saved in checkpoints).
        fast_decode: one-token steps through `llama_step` where it reproduces the model
            (`architecture.supports_fast_decode`: the same arithmetic, fewer launches);
            False = always through the model.
        dtype: the dtype the model samples in (None = its own): bf16 runs the prefill under
            bf16 autocast and the one-token steps as autocast computes them (bf16 multiplies
            and cache, the rest in float32: `llama_step.FastDecoder`); the sampling itself
            (softmax, draws, log-probs) stays in float32.
        compiled: the one-token steps through `torch.compile` (`llama_step.compiled_step`;
            the Llama-layer families only, like `fast_decode`).
        draw_rows: where these rows sit in a larger batch sampled together (one rank's share
            under torchrun): each step draws the uniforms of the whole batch and keeps these
            rows', so a row's tokens do not depend on how the batch is split (see
            `skip_draws`). None: these rows are the whole batch.
        cuda_graphs: the one-token steps at fixed batch sizes, replayed from CUDA graphs
            (`decode_graphs`; Llama-layer models, not with `compiled`). None: on CUDA;
            True: also elsewhere, run eagerly (what the tests check); False: never.
        pack_weights: the fast decoder's multiplies on weights packed for oneDNN (on a CPU, not
            compiled: `llama_step.packs_weights`). None: where that pays; False: never (MKL's
            multiply, `benchmarks/rollout.py`'s unpacked variants); True: also where it does not.
        longest_prompt: the longest prompt, in tokens, of the whole batch these rows belong to
            (under torchrun: over every rank's share), for the warning when a prompt and
            `max_new_tokens` run past the model's positions. None: these rows' longest.
    Returns:
        Rollout with batch = prompts * num_samples.
    """
    temperature = 1.0 if greedy else temperature
    device = prompt_ids.device
    stop = torch.tensor(sorted(set(stop_ids)), device=device)
    prompt_mask = prompt_mask.bool()

    weights_dtype = next(model.parameters()).dtype
    low_precision = dtype is not None and dtype != weights_dtype
    warn_if_bf16_emulated(device, dtype)
    # the one-token steps skip the module tree where the architecture allows (`llama_step`)
    capacity = prompt_ids.shape[1] + max_new_tokens
    if longest_prompt is None:
        longest_prompt = int(prompt_mask.sum(dim=1).max()) if prompt_mask.numel() else 0
    warn_past_positions(
        model, longest_prompt + max_new_tokens, "sampling (prompt + max_new_tokens)"
    )
    decoder, buckets = _one_token_steps(
        model,
        dtype,
        capacity,
        prompt_ids.shape[0] * num_samples,
        fast_decode=fast_decode,
        compiled=compiled,
        cuda_graphs=cuda_graphs,
        pack_weights=pack_weights,
        device=device,
    )
    graphed = buckets is not None

    def model_step(**inputs) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=low_precision):
            return model(past_key_values=cache, use_cache=True, **inputs).logits[:, -1].float()

    # step 1. prefill each prompt once, then copy its cache for every sample
    cache = preallocated_cache(capacity)
    logits = model_step(
        input_ids=prompt_ids,
        attention_mask=prompt_mask.long(),
        position_ids=positions_from_mask(prompt_mask),
        logits_to_keep=1,
    )
    if decoder is not None:
        for layer in cache.layers:
            layer.to_dtype(decoder.dtype)  # autocast's prefill may leave float32 keys
    if graphed:
        buckets.start(cache, num_samples)
        steps = buckets
    else:
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
        steps = CacheSteps(cache, decoder, model_step)
    if num_samples > 1:
        logits = logits.repeat_interleave(num_samples, dim=0)
        prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
    batch = prompt_ids.shape[0]
    response_ids = torch.full(
        (batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device
    )
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)

    # rows still in the cache (`rows`) and which of them are still sampling (`active`)
    rows = torch.arange(batch, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    attention = prompt_mask.long()
    next_position = prompt_mask.sum(dim=1)
    for t in range(max_new_tokens):
        # step 2. draw one token per row and keep its log-prob under the tempered policy
        scaled = logits / temperature if temperature != 1.0 else logits  # x / 1 is x: one pass less
        uniforms = _draw(generator, device, draw_rows or DrawRows(0, batch))[rows]
        tokens = _choose(scaled, greedy, top_k, top_p, uniforms)
        token_lp = token_logprobs(scaled, tokens)
        live = rows[active]
        response_ids[live, t] = tokens[active]
        logprobs[live, t] = token_lp[active]
        lengths[live] += 1
        stopped = active & torch.isin(tokens, stop)
        finished[rows[stopped]] = True
        active = active & ~stopped
        if t == max_new_tokens - 1 or not bool(active.any()):
            break
        # step 3. drop finished rows from the batch and the cache once enough have stopped
        if steps.should_compact(active):
            keep = active.nonzero().squeeze(-1)
            steps.select(keep)
            rows, tokens, attention, next_position = (
                rows[keep],
                tokens[keep],
                attention[keep],
                next_position[keep],
            )
            active = active[keep]
        # step 4. one cached forward step; stopped rows still in the batch feed padding
        tokens = torch.where(active, tokens, torch.full_like(tokens, pad_token_id))
        attention = torch.cat([attention, active.long().unsqueeze(1)], dim=1)
        logits = steps.step(tokens, next_position, attention).float()
        next_position = next_position + 1

    width = int(lengths.max()) if batch else 0
    response_mask = torch.arange(width, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    return Rollout(
        prompt_ids,
        prompt_mask,
        response_ids[:, :width],
        response_mask,
        logprobs[:, :width],
        finished,
    )
