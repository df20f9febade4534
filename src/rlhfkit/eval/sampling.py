"""Responses for evaluation, with their KL to a reference measured on the same samples.

One generation serves every metric of a model: gold scores, win rates, lengths and repetition
read the texts; the KL reads the log-probs the sampler returns (exactly the policy's at
temperature 1) against one forward pass of the reference over the same tokens.
"""

from dataclasses import dataclass

import torch

from rlhfkit.data.formats import Text
from rlhfkit.objectives.kl import KLEstimator, sequence_kl
from rlhfkit.rollout.forward import response_logprobs
from rlhfkit.rollout.sample import batched_rollouts
from rlhfkit.rollout.text import decode_responses
from rlhfkit.runtime.device import Precision, autocast, sampling_dtype


@dataclass
class EvalSamples:
    texts: list[list[str]]
    """(prompts, samples) decoded responses, special tokens removed."""
    lengths: list[list[int]]
    """(prompts, samples) response tokens, the stop token included."""
    kl: dict[str, list[list[float]]]
    """Estimator name (k1, k3) -> (prompts, samples) KL(policy || reference) of each response
    in nats; empty without a reference or for greedy answers (not samples of the policy)."""

    def flat(self, values: list[list]) -> list:
        return [v for row in values for v in row]


@torch.no_grad()
def sample_for_eval(
    model,
    tokenizer,
    prompts: list[Text],
    *,
    num_samples: int = 1,
    greedy: bool = False,
    reference=None,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 256,
    precision: Precision = Precision.FP32,
    progress: str | None = None,
) -> EvalSamples:
    """`num_samples` responses per prompt (plain text, or messages for the chat template: see
    `encode_prompts`), sampled at temperature 1 (or one greedy answer), with the sequence KL to
    `reference` (k1 and k3) when sampling. `precision` bf16: sampled as a bf16 run samples
    (`generate`'s dtype), the reference's pass under bf16 autocast.

    Temperature 1 because the KL to the reference is a property of the policy itself: samples
    at another temperature would measure a different distribution. `progress`: a description
    shows a progress bar; None = silent.
    """
    was_training = model.training, reference.training if reference is not None else False
    model.eval()
    if reference is not None:
        reference.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    per_batch = max(1, batch_size // (1 if greedy else num_samples))
    with_kl = reference is not None and not greedy
    texts, lengths, kl = (
        [],
        [],
        {e.value: [] for e in (KLEstimator.K1, KLEstimator.K3)} if with_kl else {},
    )
    try:
        for rollout in batched_rollouts(
            model,
            tokenizer,
            prompts,
            per_batch=per_batch,
            progress=progress,
            num_samples=1 if greedy else num_samples,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            generator=generator,
            dtype=sampling_dtype(precision),
        ):
            texts += decode_responses(tokenizer, rollout)
            lengths += rollout.response_lengths.tolist()
            for name, values in _sequence_kls(reference, rollout, precision, kl).items():
                kl[name] += values
    finally:
        model.train(was_training[0])
        if reference is not None:
            reference.train(was_training[1])
    k = 1 if greedy else num_samples
    return EvalSamples(
        texts=_group(texts, k),
        lengths=_group(lengths, k),
        kl={name: _group(values, k) for name, values in kl.items()},
    )


def _sequence_kls(reference, rollout, precision: Precision, estimators) -> dict[str, list]:
    """Each response's KL to `reference` by each of `estimators` (names; none: no pass)."""
    if not estimators:
        return {}
    device = rollout.input_ids.device
    with autocast(device, precision):
        ref = response_logprobs(
            reference, rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1]
        ).logprobs
    return {
        name: sequence_kl(
            rollout.logprobs.double(), ref.double(), rollout.response_mask, KLEstimator(name)
        ).tolist()
        for name in estimators
    }


def _group(values: list, per_prompt: int) -> list[list]:
    return [values[i : i + per_prompt] for i in range(0, len(values), per_prompt)]
