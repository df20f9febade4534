import pytest
import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError, SampleError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward import RewardModel
from rlhfkit.rewards.reward_model import RewardModelSource
from rlhfkit.runtime.device import Precision

PROMPTS = [
    PromptExample(
        "Q: Ann has 3 pens, buys 2 more. How many pens does Ann have now?\nA:", answer="5"
    ),
    PromptExample("User: How do I keep basil alive?\nAssistant:"),
    PromptExample("Q: Ben has 4 coins.\nA:", answer="4"),
]
RESPONSES = [
    " 3 + 2 = 5. The answer is 5.",
    " Water it often. Give it sun. Good luck!",
    " The answer is 4.",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def ensemble(tiny_model_dir):
    torch.manual_seed(0)
    return RewardModel.from_pretrained(tiny_model_dir, num_heads=3)


def forward_alone(model, ids: list[int]) -> torch.Tensor:
    """(heads,) what the model gives one unpadded sequence."""
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        return model(input_ids, torch.ones_like(input_ids)).rewards[0]


def plain_ids(tokenizer, prompt: str, response: str) -> list[int]:
    # The reward-model trainer's encoding of plain text: prompt + response, then EOS.
    return tokenizer(prompt + response, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]


def test_scores_equal_the_models_forward_on_the_same_text(tiny_model_dir, tokenizer):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    # batch_size 2 over 3 samples of different lengths: padding and a second batch both happen.
    scores = RewardModelSource(model, tokenizer, batch_size=2, max_length=256).score(
        PROMPTS, RESPONSES
    )
    expected = [
        forward_alone(model, plain_ids(tokenizer, p.prompt, r)).item()
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    assert scores.rewards.dtype == torch.float32
    assert scores.rewards.tolist() == pytest.approx(expected, abs=1e-5)
    assert scores.uncertainty.tolist() == [0.0, 0.0, 0.0]


def test_rows_of_similar_length_share_a_batch_and_come_back_in_order(tiny_model_dir, tokenizer):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[2]]  # long, short, long, short
    responses = [RESPONSES[0], RESPONSES[2], RESPONSES[0], RESPONSES[2]]
    widths = []
    hook = model.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape))
    scores = RewardModelSource(model, tokenizer, batch_size=2, max_length=256).score(
        prompts, responses
    )
    hook.remove()
    short = len(plain_ids(tokenizer, PROMPTS[2].prompt, RESPONSES[2]))
    long = len(plain_ids(tokenizer, PROMPTS[0].prompt, RESPONSES[0]))
    assert widths == [(2, short), (2, long)]  # no row padded to the other kind's length
    expected = [
        forward_alone(model, plain_ids(tokenizer, p.prompt, r)).item()
        for p, r in zip(prompts, responses)
    ]
    assert scores.rewards.tolist() == pytest.approx(expected, abs=1e-5)


def test_a_bf16_run_scores_in_bf16_and_the_scores_can_enter_a_loss(tiny_model_dir, tokenizer):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    exact, bf16 = (
        RewardModelSource(model, tokenizer, batch_size=2, max_length=256, precision=p).score(
            PROMPTS, RESPONSES
        )
        for p in (Precision.FP32, Precision.BF16)
    )
    gap = (exact.rewards - bf16.rewards).abs()
    assert bf16.rewards.dtype == torch.float32
    assert 0 < gap.max() < 0.05 * exact.rewards.abs().max().clamp(min=1.0)
    # computed in inference mode, handed back as an ordinary tensor a backward may keep
    weight = torch.ones(3, requires_grad=True)
    assert not bf16.rewards.is_inference()
    (weight * bf16.rewards).sum().backward()
    assert torch.equal(weight.grad, bf16.rewards)


def test_a_long_sequence_is_scored_on_its_first_max_length_tokens(tiny_model_dir, tokenizer):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    ids = plain_ids(tokenizer, PROMPTS[0].prompt, RESPONSES[0])
    prompt_length = len(tokenizer(PROMPTS[0].prompt, add_special_tokens=False)["input_ids"])
    max_length = prompt_length + 3
    assert len(ids) > max_length
    source = RewardModelSource(model, tokenizer, batch_size=4, max_length=max_length)
    scores = source.score(PROMPTS[:1], RESPONSES[:1])
    assert scores.rewards.item() == pytest.approx(
        forward_alone(model, ids[:max_length]).item(), abs=1e-5
    )


def test_samples_cut_to_fit_are_flagged_and_warned_about_once(tiny_model_dir, tokenizer, caplog):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    # room for the short answer with its EOS, not for the two longer ones
    prompts = [PROMPTS[2]] * 3
    responses = [RESPONSES[2] + " Ben has 4 coins.", RESPONSES[2] + " 4.", RESPONSES[2]]
    max_length = len(plain_ids(tokenizer, PROMPTS[2].prompt, RESPONSES[2]))
    source = RewardModelSource(model, tokenizer, batch_size=4, max_length=max_length)
    with caplog.at_level("WARNING", logger="rlhfkit"):
        first = source.score(prompts, responses)
        again = source.score(prompts, responses)
    assert first.cut["model"].tolist() == [True, True, False]
    assert torch.equal(again.cut["model"], first.cut["model"])
    assert [r.getMessage() for r in caplog.records if r.name.startswith("rlhfkit")] == [
        f"reward source 'model': 2 of 3 samples are longer than reward_max_length={max_length} "
        "tokens and are scored with the end of the answer and its EOS cut (truncation "
        "'keep_start'): raise reward_max_length so the reward model reads whole answers "
        "(warned once)"
    ]


def test_a_source_whose_caller_counts_the_cut_samples_warns_with_the_callers_counts(
    tiny_model_dir, tokenizer, caplog
):
    # a training step under torchrun: each rank scores its share, the counts are the step's
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    max_length = len(plain_ids(tokenizer, PROMPTS[2].prompt, RESPONSES[2]))
    source = RewardModelSource(
        model, tokenizer, batch_size=4, max_length=max_length, warn_cut=False
    )
    with caplog.at_level("WARNING", logger="rlhfkit"):
        scores = source.score([PROMPTS[2]] * 2, [RESPONSES[2] + " 4.", RESPONSES[2]])
        assert scores.cut["model"].tolist() == [True, False]
        assert not [r for r in caplog.records if r.name.startswith("rlhfkit")]
        source.warn_once_if_cut(3, 8)
        source.warn_once_if_cut(5, 8)
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("rlhfkit")]
    assert len(warned) == 1 and warned[0].startswith("reward source 'model': 3 of 8 samples ")


def test_samples_that_fit_are_not_flagged_and_nothing_is_warned(tiny_model_dir, tokenizer, caplog):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    source = RewardModelSource(
        model, tokenizer, batch_size=4, max_length=256, length_setting="max_length"
    )
    with caplog.at_level("WARNING", logger="rlhfkit"):
        scores = source.score(PROMPTS, RESPONSES)
    assert scores.cut["model"].tolist() == [False, False, False]
    assert not [r for r in caplog.records if r.name.startswith("rlhfkit")]


def test_conversational_prompts_are_scored_through_the_chat_template(tiny_model_dir, tokenizer):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    prompt = [{"role": "user", "content": "How do I keep basil alive?"}]
    response = "Water it often."
    text = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": response}], tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    source = RewardModelSource(model, tokenizer, batch_size=4, max_length=256)
    scores = source.score([PromptExample(prompt)], [response])
    assert scores.rewards.item() == pytest.approx(forward_alone(model, ids).item(), abs=1e-5)


def test_plain_text_is_scored_with_the_tokenizers_bos(tiny_model_dir, bos_tokenizer):
    # the same encoding as the reward model's training: one BOS first, the EOS last
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    source = RewardModelSource(model, bos_tokenizer, batch_size=2, max_length=256)
    (encoded,) = source.encode([PROMPTS[0].prompt], [RESPONSES[0]])
    whole = bos_tokenizer(PROMPTS[0].prompt + RESPONSES[0])["input_ids"]
    assert encoded.input_ids == whole + [bos_tokenizer.eos_token_id]
    assert encoded.input_ids.count(bos_tokenizer.bos_token_id) == 1


def test_ensemble_mean_is_the_reward_and_the_penalty_is_coef_times_std(ensemble, tokenizer):
    plain = RewardModelSource(ensemble, tokenizer, batch_size=2, max_length=256).score(
        PROMPTS, RESPONSES
    )
    texts = [plain_ids(tokenizer, p.prompt, r) for p, r in zip(PROMPTS, RESPONSES)]
    heads = torch.stack([forward_alone(ensemble, ids) for ids in texts])  # (samples, heads)
    assert heads.shape == (3, 3)
    assert plain.rewards.tolist() == pytest.approx(heads.mean(dim=1).tolist(), abs=1e-5)
    assert plain.uncertainty.tolist() == pytest.approx(heads.std(dim=1).tolist(), abs=1e-5)
    assert (plain.uncertainty > 0).all()

    source = RewardModelSource(
        ensemble, tokenizer, batch_size=2, max_length=256, uncertainty_coef=0.5
    )
    penalised = source.score(PROMPTS, RESPONSES)
    assert torch.equal(penalised.uncertainty, plain.uncertainty)
    assert torch.allclose(penalised.rewards, plain.rewards - 0.5 * plain.uncertainty, atol=1e-6)
    assert (penalised.rewards < plain.rewards).all()


def test_an_uncertainty_penalty_on_a_single_head_says_it_does_nothing(
    tiny_model_dir, tokenizer, caplog
):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1)
    with caplog.at_level("WARNING", logger="rlhfkit"):
        RewardModelSource(model, tokenizer, batch_size=2, max_length=256, uncertainty_coef=1.0)
    assert "uncertainty_coef=1.0 has no effect: the reward model has one head" in caplog.text


def test_scoring_leaves_the_models_mode_and_gradients_alone(ensemble, tokenizer):
    ensemble.train()
    scores = RewardModelSource(ensemble, tokenizer, batch_size=2, max_length=256).score(
        PROMPTS, RESPONSES
    )
    assert ensemble.training and not scores.rewards.requires_grad
    ensemble.eval()


def test_a_prompt_that_leaves_no_room_for_the_response_is_an_error(ensemble, tokenizer):
    source = RewardModelSource(ensemble, tokenizer, batch_size=2, max_length=4)
    with pytest.raises(
        RlhfkitError,
        match=r"'model': sample 0 \('Q: Ann has .*'\) does not fit in reward_max_length=4",
    ):
        source.score(PROMPTS[:1], RESPONSES[:1])
    # a share of a step (a rank's under torchrun) names its samples by their index in the step
    with pytest.raises(
        SampleError, match=r"'model': sample 3 \('Q: Ann has .*'\) does not"
    ) as caught:
        source.score(PROMPTS[:1], RESPONSES[:1], first=3)
    assert caught.value.kind == (
        "reward source 'model': a sample does not fit in reward_max_length=4 with truncation "
        "'keep_start'"
    )
