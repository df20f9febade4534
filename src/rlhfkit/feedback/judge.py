"""An AI judge (RLAIF): a causal LM asked which of two replies is better.

The judge reads one comparison prompt and its next token is the verdict, " A" or " B"; the
probability of A is read from the logits restricted to those two tokens, so no sampling and no
parsing of free text is involved. Every pair is asked in both orders and the two answers are
combined (`verdicts.combine_orders`), which cancels the judge's preference for a position.
Any causal LM directory can judge; the project's own judges are trained on rows in exactly
this format (`judge_data.judge_sft_rows`).
"""

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch

from rlhfkit.data.collate import left_pad
from rlhfkit.data.conversation import conversation_text
from rlhfkit.data.formats import Text
from rlhfkit.data.text_ids import special_prefix
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.verdicts import combine_orders, order_flips, position_shift
from rlhfkit.rollout.architecture import position_limit, warn_past_positions
from rlhfkit.rollout.engine import positions_from_mask
from rlhfkit.runtime.progress import work_bar

log = logging.getLogger(__name__)
ANSWER_A, ANSWER_B = " A", " B"
QUESTION = "Which reply is better?"


def reply_text(reply: Text) -> str:
    """A reply as one string: a conversational reply is its (last) assistant message."""
    return (reply if isinstance(reply, str) else reply[-1]["content"]).strip()


def judge_prompt(prompt: Text, reply_a: Text, reply_b: Text) -> str:
    """The comparison prompt; the judge's answer is " A" or " B"."""
    return (
        f"{conversation_text(prompt)}\n"
        f"Reply A: {reply_text(reply_a)}\nReply B: {reply_text(reply_b)}\n"
        f"{QUESTION}\nJudge:"
    )


def answer_inputs(
    tokenizer, texts: list[str], max_length: int | None = None
) -> tuple[list[list[int]], list[int], list[int]]:
    """Token ids to run the judge on and the two answer tokens it chooses between, per text.

    The answers are told apart at the first token where `text + " A"` and `text + " B"` differ;
    the tokens before it (the prompt, and a shared leading space when the tokenizer keeps it
    apart from the letter) are the judge's input, after the tokenizer's BOS when it adds one.
    This is the split the SFT tokenisation of a judge row makes, so a trained judge is asked at
    exactly the position it learned. A row past `max_length` (None: no limit) loses its start as
    a judge row does in training (`keep_end`: the whole row, answer and EOS included, keeps its
    last max_length tokens).
    """
    with_a = tokenizer([t + ANSWER_A for t in texts], add_special_tokens=False)["input_ids"]
    with_b = tokenizer([t + ANSWER_B for t in texts], add_special_tokens=False)["input_ids"]
    prefix = special_prefix(tokenizer)
    inputs, tokens_a, tokens_b = [], [], []
    for ids_a, ids_b in zip(with_a, with_b):
        shared = next(
            (i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b), min(len(ids_a), len(ids_b))
        )
        if shared == 0 or shared >= min(len(ids_a), len(ids_b)):
            raise RlhfkitError(
                f"the tokenizer does not tell '{ANSWER_A}' from '{ANSWER_B}' after a judge prompt"
            )
        ids = prefix + ids_a[:shared]
        keep = None if max_length is None else max(1, max_length - (len(ids_a) - shared) - 1)
        inputs.append(ids if keep is None else ids[-keep:])
        tokens_a.append(ids_a[shared])
        tokens_b.append(ids_b[shared])
    return inputs, tokens_a, tokens_b


@torch.no_grad()
def judge_first_better_prob(
    model,
    tokenizer,
    prompts: list[Text],
    first: list[str],
    second: list[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """P(first better) as the judge answers with `first[i]` shown as reply A: one order only.
    A comparison longer than `max_length` tokens (None: `judge_length`) loses its start, as the
    judge's training rows do (`answer_inputs`): the conversation's, and past it reply A's,
    with a warning (`cut_comparisons`).
    `progress`: a description shows a progress bar of the batches; None = silent.

    Returns:
        (n,) float32 on the CPU: softmax over the logits of the two answer tokens, A's share
        (= sigmoid(logit_A - logit_B)).
    """
    if not len(prompts) == len(first) == len(second):
        raise ValueError(
            f"judge: {len(prompts)} prompts, {len(first)} first and {len(second)} second replies"
        )
    if not prompts:
        return torch.zeros(0)
    texts = [judge_prompt(p, a, b) for p, a, b in zip(prompts, first, second)]
    limit = max_length if max_length is not None else judge_length(model, tokenizer)
    inputs, tokens_a, tokens_b = answer_inputs(tokenizer, texts, limit)
    warn_past_positions(model, max(map(len, inputs)), "judge (prompt and both replies)")
    _warn_if_replies_cut(cut_comparisons(tokenizer, prompts, texts, inputs), limit)
    was_training = model.training
    model.eval()
    probs = []
    try:
        with work_bar(-(-len(inputs) // batch_size), progress) as bar:
            for start in range(0, len(inputs), batch_size):
                batch = slice(start, start + batch_size)
                probs.append(
                    _prob_a(model, tokenizer, inputs[batch], tokens_a[batch], tokens_b[batch])
                )
                bar.update(1, tokens=sum(map(len, inputs[batch])))  # the tokens read
    finally:
        model.train(was_training)
    return torch.cat(probs)


class CutComparisons(NamedTuple):
    """Which comparisons the judge reads cut (`answer_inputs` keeps a long one's end)."""

    cut: torch.Tensor
    """(n,) bool: longer than the judge reads, so the conversation lost its start."""
    replies_cut: torch.Tensor
    """(n,) bool: so much longer that the whole conversation and reply A's start are lost too:
    the verdict is on less than both replies."""


def cut_comparisons(tokenizer, prompts: list[Text], texts: list[str], inputs) -> CutComparisons:
    """What each comparison `texts[i]` lost when cut to `inputs[i]` (`answer_inputs`), judged
    by token counts: its whole text's, and its conversation's up to "Reply A:"."""
    whole = answer_inputs(tokenizer, texts)[0]
    lost = torch.tensor([len(a) - len(b) for a, b in zip(whole, inputs)], dtype=torch.long)
    heads = [f"{conversation_text(p)}\n" for p in prompts]
    prefix = len(special_prefix(tokenizer))
    conversation = tokenizer(heads, add_special_tokens=False)["input_ids"]
    before_replies = torch.tensor([prefix + len(ids) for ids in conversation], dtype=torch.long)
    return CutComparisons(lost > 0, lost > before_replies)


def _warn_if_replies_cut(cut: CutComparisons, limit: int | None) -> None:
    """Warn when a comparison lost reply text: its verdict does not judge both replies."""
    count = int(cut.replies_cut.sum())
    if count:
        log.warning(
            f"judge: {count} of {len(cut.cut)} comparisons are so much longer than the "
            f"{limit} tokens it reads that their whole conversation and the start of reply A "
            "are cut: those verdicts judge less than both replies (shorter replies, or a judge "
            "that reads longer texts)"
        )


def judge_length(model, tokenizer) -> int | None:
    """The longest comparison a judge is asked: its tokenizer's `model_max_length` (where a
    judge trained by `rlhfkit judge` keeps its `sft.max_length`, the length it learned at),
    within the model's `max_position_embeddings`; None where neither is known."""
    # transformers writes a huge number for a tokenizer that sets no limit
    declared = getattr(tokenizer, "model_max_length", None)
    limits = [declared if isinstance(declared, int) and declared < 10**9 else None]
    limits.append(position_limit(model))
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _prob_a(model, tokenizer, inputs: list[list[int]], tokens_a: list[int], tokens_b: list[int]):
    """(batch,) P(A) of one batch of judge inputs: the two answer tokens' softmax, A's share."""
    device = next(model.parameters()).device
    ids, mask = left_pad(inputs, tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    logits = (
        model(
            input_ids=ids,
            attention_mask=mask.long(),
            position_ids=positions_from_mask(mask),
            logits_to_keep=1,
        )
        .logits[:, -1]
        .float()
    )  # (batch, vocab)
    rows = torch.arange(ids.shape[0], device=device)
    a, b = torch.tensor(tokens_a, device=device), torch.tensor(tokens_b, device=device)
    return torch.sigmoid(logits[rows, a] - logits[rows, b]).cpu()


@dataclass(frozen=True)
class PairJudgements:
    """A judge's verdicts on n pairs (first[i], second[i]), each asked in both orders."""

    first_better: torch.Tensor
    """(n,) P(first better), the mean of both orders (`verdicts.combine_orders`)."""
    prob_ab: torch.Tensor
    """(n,) P(A better) with the first response shown as A."""
    prob_ba: torch.Tensor
    """(n,) P(A better) with the second response shown as A."""
    cut: int = 0
    """Pairs longer than the judge reads in either order: their conversation lost its start."""
    replies_cut: int = 0
    """Pairs of which the judge read less than both replies in either order (`CutComparisons`)."""

    @property
    def flip_rate(self) -> float:
        """Share of pairs whose verdict changes when the order is swapped (a count over n, as
        a report writes it: 0.58, not float32's 0.5799999833)."""
        flips = int(order_flips(self.prob_ab, self.prob_ba).sum())
        return flips / len(self.prob_ab) if len(self.prob_ab) else 0.0

    @property
    def position_bias(self) -> float:
        """Mean probability moved to position A (0 = none, +1/2 = always A), in float64."""
        shift = position_shift(self.prob_ab.double(), self.prob_ba.double())
        return float(shift.mean()) if len(self.prob_ab) else 0.0


def judge_pairs(
    model,
    tokenizer,
    prompts: list[Text],
    first: list[str],
    second: list[str],
    *,
    batch_size: int = 32,
    progress: str | None = None,
) -> PairJudgements:
    """Ask every pair in both orders (in the same batches) and combine the answers, each within
    the judge's length (`judge_length`); `progress` as `judge_first_better_prob`'s."""
    n = len(prompts)
    asked = (list(prompts) * 2, list(first) + list(second), list(second) + list(first))
    probs = judge_first_better_prob(
        model, tokenizer, *asked, batch_size=batch_size, progress=progress
    )
    prob_ab, prob_ba = probs[:n], probs[n:]
    if n == 0:
        return PairJudgements(probs, prob_ab, prob_ba)
    texts = [judge_prompt(p, a, b) for p, a, b in zip(*asked)]
    limit = judge_length(model, tokenizer)
    cut = cut_comparisons(tokenizer, asked[0], texts, answer_inputs(tokenizer, texts, limit)[0])
    either = [int((c[:n] | c[n:]).sum()) for c in cut]
    return PairJudgements(combine_orders(prob_ab, prob_ba), prob_ab, prob_ba, *either)


def preference_rows(
    prompts: list[Text],
    first: list[str],
    second: list[str],
    first_better: torch.Tensor,
    *,
    min_margin: float = 0.0,
) -> list[dict]:
    """Preference rows `{"prompt", "chosen", "rejected"}` from judged pairs.

    A pair is kept when |P(first better) - 1/2| > min_margin: near-ties carry little signal
    and much judge noise, and an exact tie is always dropped.
    """
    rows = []
    for prompt, a, b, p in zip(prompts, first, second, first_better.tolist()):
        if abs(p - 0.5) > min_margin:
            chosen, rejected = (a, b) if p > 0.5 else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows
