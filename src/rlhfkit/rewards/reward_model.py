"""A trained reward model as a reward source, with the ensemble uncertainty penalty.

With N heads (an ensemble on one backbone, seed 000) the reward is

    r = mean_k r_k - uncertainty_coef * std_k r_k

the std being the Bessel-corrected sample std over heads (0 with one head): the policy is
paid less where the members disagree, i.e. where the reward model is least trustworthy.
"""

import logging

import torch

from rlhfkit.data.collate import pad_batch
from rlhfkit.data.formats import PromptExample, Text
from rlhfkit.data.length_chunks import length_sorted_chunks
from rlhfkit.data.tokenize import EncodedExample, Truncation, encode_prompt_completions
from rlhfkit.errors import RlhfkitError, SampleError
from rlhfkit.models.reward import RewardModel
from rlhfkit.rewards.base import RewardScores, check_same_length, describe_sample
from rlhfkit.runtime.device import Precision, autocast, move_batch
from rlhfkit.runtime.distributed import gathered

log = logging.getLogger(__name__)

CUT_PARTS = {
    Truncation.KEEP_START: "the end of the answer and its EOS",
    Truncation.KEEP_END: "the start of the prompt",
}
"""What a sample longer than `max_length` loses under each truncation (`drop` refuses it)."""


def as_completion(prompt: Text, response: str) -> Text:
    """The response in the prompt's kind: a conversational prompt needs an assistant message."""
    return response if isinstance(prompt, str) else [{"role": "assistant", "content": response}]


class RewardModelSource:
    """Scores prompt + response with a `RewardModel`.

    Args:
        model: the reward model; it is scored where it lives (`model.device`).
        tokenizer: the tokenizer the reward model was trained with.
        batch_size: sequences per forward pass (rows of similar length go together).
        max_length: tokens per sequence, as in the reward model's training.
        uncertainty_coef: weight of the ensemble std subtracted from the mean (0 = off).
        truncation: what to do with a longer sequence, as in the reward model's training.
        name: the source's name in metrics and errors.
        precision: the run's: bf16 scores under bf16 autocast (the rewards come back float32).
        length_setting: the setting that gives `max_length`, named in the warning when samples
            are cut to fit it (`reward_max_length` in the RL trainers, `max_length` in eval).
        warn_cut: warn (once) when the samples of a call are cut to fit `max_length`. False
            where the caller counts them over more than one call and warns through
            `warn_once_if_cut` (a training step's, over every rank's share: one rank's share
            alone would miss the samples of the others).
    """

    def __init__(
        self,
        model: RewardModel,
        tokenizer,
        *,
        batch_size: int,
        max_length: int,
        uncertainty_coef: float = 0.0,
        truncation: Truncation | str = Truncation.KEEP_START,
        name: str = "model",
        precision: Precision = Precision.FP32,
        length_setting: str = "reward_max_length",
        warn_cut: bool = True,
    ):
        if batch_size < 1:
            raise RlhfkitError(
                f"reward source '{name}': batch_size must be at least 1, got {batch_size}"
            )
        if uncertainty_coef < 0:
            raise RlhfkitError(
                f"reward source '{name}': uncertainty_coef must be >= 0, got {uncertainty_coef}"
            )
        if uncertainty_coef > 0 and model.num_heads == 1:
            # one head has no spread: the penalty would silently do nothing
            log.warning(
                f"reward source '{name}': uncertainty_coef={uncertainty_coef} has no effect: "
                "the reward model has one head, no ensemble spread to penalise (rlhfkit rm "
                "num_heads=4 trains an ensemble)"
            )
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.precision = Precision(precision)
        self.batch_size, self.max_length = batch_size, max_length
        self.uncertainty_coef, self.truncation = uncertainty_coef, Truncation(truncation)
        pad = tokenizer.pad_token_id
        self.pad_token_id = model.model.config.pad_token_id if pad is None else pad
        self.length_setting, self.warn_cut, self.warned_cut = length_setting, warn_cut, False

    def encode(
        self, prompts: list[Text], responses: list[str], first: int = 0
    ) -> list[EncodedExample]:
        """The same encoding as the reward-model trainer's, so the model scores the kind of
        sequence it was trained on (same EOS, same chat template, same truncation). `first`:
        the index of `prompts[0]` among the step's samples, as an error names them."""
        encoded = encode_prompt_completions(
            self.tokenizer,
            [(prompt, as_completion(prompt, r)) for prompt, r in zip(prompts, responses)],
            max_length=self.max_length,
            truncation=self.truncation,
        )
        for index, (prompt, row) in enumerate(zip(prompts, encoded)):
            if row is None:
                # Scoring a dropped row as 0 would hand the policy an arbitrary reward.
                fit = (
                    f"does not fit in {self.length_setting}={self.max_length} with truncation "
                    f"'{self.truncation.value}'"
                )
                raise SampleError(
                    f"reward source '{self.name}': {describe_sample(first + index, prompt)} {fit}",
                    kind=f"reward source '{self.name}': a sample {fit}",
                )
        if self.warn_cut:
            self.warn_once_if_cut(sum(e.truncated for e in encoded), len(encoded))
        return encoded

    def warn_once_if_cut(self, cut: int, total: int) -> None:
        """A warning the first time samples are cut to fit `max_length` (`cut` of `total`): the
        model then scores a sequence without what was cut, and answers that differ only there
        score the same."""
        if not cut or self.warned_cut:
            return
        self.warned_cut = True
        lost = CUT_PARTS[self.truncation]
        log.warning(
            f"reward source '{self.name}': {cut} of {total} samples are longer than "
            f"{self.length_setting}={self.max_length} tokens and are scored with {lost} cut "
            f"(truncation '{self.truncation.value}'): raise "
            f"{self.length_setting} so the reward model reads whole answers (warned once)"
        )

    def head_rewards(self, encoded: list[EncodedExample]) -> torch.Tensor:
        """(n, heads) float32 on the CPU: every head's reward of every encoded response
        (`encode`). A sharded model is gathered once around the batches, whose number depends on
        this rank's rows: every rank must call this together (see
        `runtime.distributed.gathered`)."""
        was_training = self.model.training
        self.model.eval()
        # made outside inference mode, so an ordinary tensor: a loss may keep it for its backward
        out = torch.zeros(len(encoded), self.model.num_heads)
        # batches of rows of similar length: little padding, and on a CPU a batch of 32 rows
        # keeps its activations in cache (64 rows of the benchmark's 44 tokens: 20% slower)
        lengths = [len(e.input_ids) for e in encoded]
        with gathered(self.model), torch.inference_mode():
            for rows in length_sorted_chunks(lengths, self.batch_size):
                batch = pad_batch([encoded[i] for i in rows], self.pad_token_id)
                batch = move_batch(batch, self.model.device)
                with autocast(self.model.device, self.precision):
                    rewards = self.model(batch["input_ids"], batch["attention_mask"]).rewards
                out[rows] = rewards.float().cpu()
        self.model.train(was_training)
        return out

    def score(
        self, prompts: list[PromptExample], responses: list[str], *, first: int = 0
    ) -> RewardScores:
        check_same_length(self.name, prompts, responses)
        encoded = self.encode([p.prompt for p in prompts], responses, first)
        heads = self.head_rewards(encoded)
        mean = heads.mean(dim=1)
        # torch's std over one head is NaN; one head has no spread to penalise.
        std = heads.std(dim=1) if heads.shape[1] > 1 else torch.zeros_like(mean)
        cut = torch.tensor([e.truncated for e in encoded], dtype=torch.bool)
        return RewardScores(
            rewards=mean - self.uncertainty_coef * std, uncertainty=std, cut={self.name: cut}
        )
