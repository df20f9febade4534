import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.models.tiny import IM_END
from rlhfkit.rollout.sample import sample_responses

PROMPTS = [
    "Q: Ann has 3 pens, buys 2 more. How many pens does Ann have now?\nA:",
    "User: How can I sleep better at night?\nAssistant:",
    "Q:",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(
        tiny_model_dir
    )


def sample(model_and_tokenizer, **kwargs):
    model, tokenizer = model_and_tokenizer
    kwargs = {"num_samples": 2, "max_new_tokens": 8, **kwargs}
    return sample_responses(model, tokenizer, PROMPTS, **kwargs)


def test_shape_is_prompts_by_samples(model_and_tokenizer):
    samples = sample(model_and_tokenizer, num_samples=3, batch_size=4)  # 9 rows in 3 batches
    assert len(samples.texts) == len(PROMPTS)
    assert all(
        len(texts) == 3 and all(isinstance(t, str) for t in texts) for texts in samples.texts
    )
    assert 0 < samples.num_tokens <= len(PROMPTS) * 3 * 8


def test_same_seed_same_texts_other_seed_other_texts(model_and_tokenizer):
    first = sample(model_and_tokenizer, seed=1)
    assert sample(model_and_tokenizer, seed=1) == first
    assert sample(model_and_tokenizer, seed=2).texts != first.texts
    # the samples of one prompt differ from each other
    assert any(len(set(texts)) > 1 for texts in first.texts)


def test_batching_does_not_change_the_greedy_texts(model_and_tokenizer):
    whole = sample(model_and_tokenizer, greedy=True, batch_size=64)
    one_by_one = sample(model_and_tokenizer, greedy=True, batch_size=1)
    assert whole.texts == one_by_one.texts


def test_greedy_is_deterministic_and_identical_across_samples(model_and_tokenizer):
    first = sample(model_and_tokenizer, greedy=True, seed=1)
    assert sample(model_and_tokenizer, greedy=True, seed=2) == first
    assert all(len(set(texts)) == 1 for texts in first.texts)


def test_global_torch_rng_is_left_untouched(model_and_tokenizer):
    torch.manual_seed(123)
    control = torch.rand(4)
    torch.manual_seed(123)
    sample(model_and_tokenizer, seed=7)
    assert torch.equal(torch.rand(4), control)


def test_model_mode_and_tokenizer_padding_side_are_restored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    tokenizer.padding_side = "right"
    sample(model_and_tokenizer)
    assert model.training and tokenizer.padding_side == "right"
    model.eval()
    sample(model_and_tokenizer)
    assert not model.training


def always_emit(model, token_id, monkeypatch):
    bias = torch.full((model.config.vocab_size,), -1e4)
    bias[token_id] = 1e4
    original = model.lm_head.forward
    monkeypatch.setattr(model.lm_head, "forward", lambda hidden: original(hidden) + bias)


def test_generation_stops_at_eos(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    always_emit(model, tokenizer.eos_token_id, monkeypatch)
    samples = sample(model_and_tokenizer, num_samples=2)
    # empty texts of one token each
    assert samples.texts == [["", ""]] * len(PROMPTS)
    assert samples.num_tokens == len(PROMPTS) * 2


def test_generation_stops_at_the_end_of_an_assistant_turn(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    always_emit(model, tokenizer.convert_tokens_to_ids(IM_END), monkeypatch)
    samples = sample_responses(model, tokenizer, [prompt], max_new_tokens=8)
    assert samples.num_tokens == 1
