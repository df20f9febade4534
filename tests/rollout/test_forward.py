import torch

from rlhfkit.rollout.forward import response_logprobs
from tests.rollout.conftest import generate_samples


def test_response_logprobs_of_the_training_pass_equal_the_sampling_logprobs(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rollout = generate_samples(model, tokenizer, temperature=1.3)
    out = response_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1],
                            temperature=1.3, with_entropy=True)
    assert out.logprobs.requires_grad
    diff = (out.logprobs.detach() - rollout.logprobs)[rollout.response_mask].abs().max()
    assert diff < 1e-5
    assert (out.entropy[rollout.response_mask] > 0).all()
    assert (out.entropy <= torch.log(torch.tensor(300.0)) + 1e-4).all()  # at most log(vocab)
