import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.reward import (
    RewardModel,
    is_process_reward_model,
    last_token_index,
    mark_objective,
    value_model_from,
)
from tests.models.test_loading import BROKEN_MODELS

TEXTS = [
    "Q: Ann has 3 pens, buys 2 more.\nA: 3 + 2 = 5. The answer is 5.",
    "User: Hi\nAssistant: Good luck!",
]


def naive_last_token_index(attention_mask):
    return torch.tensor([max(i for i, m in enumerate(row) if m) for row in attention_mask.tolist()])


def encode(tokenizer, texts, padding_side="right"):
    tokenizer.padding_side = padding_side
    rows = [
        tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for t in texts
    ]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(length - len(row), length)
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_last_token_index_hand_cases():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1]
    assert last_token_index(mask.bool()).tolist() == [2, 4, 4, 1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 12), st.integers(0, 6)), min_size=1, max_size=5),
    st.booleans(),
)
def test_last_token_index_equals_naive_for_right_and_left_padding(rows, left):
    length = max(real + pad for real, pad in rows)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (real, _) in enumerate(rows):
        if left:
            mask[i, length - real :] = 1
        else:
            mask[i, :real] = 1
    assert torch.equal(last_token_index(mask), naive_last_token_index(mask))


@pytest.mark.parametrize("num_heads", [1, 3])
def test_rewards_shape_batch_by_heads(tiny_model_dir, tokenizer, num_heads):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=num_heads)
    ids, mask = encode(tokenizer, TEXTS)
    out = model(ids, mask)
    assert model.num_heads == num_heads
    assert out.rewards.shape == (2, num_heads)
    assert out.hidden.shape == (2, ids.shape[1], model.model.config.hidden_size)
    assert model.token_scores(out.hidden).shape == (2, ids.shape[1], num_heads)


def test_rewards_are_float32_under_bf16_autocast(tiny_model_dir, tokenizer):
    # the head runs in float32: bf16 rewards kept 8 bits, so a logged pair accuracy of 127/224
    # read 0.5664 and rewards closer than bf16's spacing became ties
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=2).eval()
    ids, mask = encode(tokenizer, TEXTS)
    response_mask = mask.bool() & (torch.arange(ids.shape[1]) >= 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
        shared = model.rewards_by_length(ids, mask, response_mask=response_mask, group_size=2)
        per_token = model.token_scores(out.hidden)
    head = model.model.score.weight
    last = out.hidden[torch.arange(2), last_token_index(mask)].float()
    for rewards in (out.rewards, shared, per_token):
        assert rewards.dtype == torch.float32
    torch.testing.assert_close(out.rewards, last @ head.T)
    torch.testing.assert_close(per_token.float(), out.hidden.float() @ head.T)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_score_is_read_at_the_last_real_token(tiny_model_dir, tokenizer, padding_side):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=2).eval()
    ids, mask = encode(tokenizer, TEXTS, padding_side)
    with torch.no_grad():
        padded = model(ids, mask)
        alone = [model(*encode(tokenizer, [text])) for text in TEXTS]
        # the head applied at every position, read at the last real token
        per_token = model.token_scores(padded.hidden)
    short = 1  # TEXTS[1] is the padded row
    assert mask[short].sum() < mask.shape[1]
    for row in range(2):
        assert torch.allclose(padded.rewards[row], alone[row].rewards[0], atol=1e-5)
        assert torch.allclose(padded.rewards[row], per_token[row, last_token_index(mask)[row]])
    # and it is not the score at the final (padding) position
    assert not torch.allclose(
        padded.rewards[short], per_token[short, -1 if padding_side == "right" else 0]
    )


def test_saved_reward_model_gives_the_same_logits_in_plain_transformers(
    tiny_model_dir, tokenizer, tmp_path
):
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=2).eval()
    torch.nn.init.normal_(model.model.score.weight)
    model.save_pretrained(tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids, mask = encode(tokenizer, TEXTS)
    with torch.no_grad():
        ours = model(ids, mask).rewards
        theirs = reloaded(input_ids=ids, attention_mask=mask).logits
    assert theirs.shape == (2, 2)
    assert torch.allclose(ours, theirs, atol=1e-6)
    # and back through our loader, as a reward model this time
    again = RewardModel.from_pretrained(tmp_path / "rm", num_heads=2).eval()
    with torch.no_grad():
        assert torch.equal(again(ids, mask).rewards, ours)


def test_saved_reward_model_agrees_with_transformers_when_pad_is_eos(tiny_model_dir, tmp_path):
    # Many base models ship without a pad token; load_tokenizer and RewardModel then use EOS.
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    config["pad_token_id"] = None
    (base / "config.json").write_text(json.dumps(config))
    model = RewardModel.from_pretrained(base, num_heads=1).eval()
    torch.nn.init.normal_(model.model.score.weight)
    model.save_pretrained(tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = torch.tensor(
        [tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    )
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(
            model(ids, mask).rewards, reloaded(input_ids=ids, attention_mask=mask).logits, atol=1e-6
        )


def test_num_heads_mismatch_is_a_user_error(tiny_model_dir, tmp_path):
    RewardModel.from_pretrained(tiny_model_dir, num_heads=2).save_pretrained(tmp_path / "rm")
    with pytest.raises(RlhfkitError, match="2 reward heads, 1 were asked for"):
        RewardModel.from_pretrained(tmp_path / "rm", num_heads=1)


def test_directory_without_config_is_a_user_error(tmp_path):
    with pytest.raises(RlhfkitError, match="missing does not exist"):
        RewardModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlhfkitError, match="no config.json"):
        RewardModel.from_pretrained(tmp_path / "empty")


def test_imitation_head_gives_the_causal_lm_logits(tiny_model_dir, tokenizer):
    model = RewardModel.from_pretrained(tiny_model_dir, with_lm_head=True).eval()
    causal = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids, mask = encode(tokenizer, TEXTS)
    with torch.no_grad():
        logits = model.lm_logits(model(ids, mask).hidden)
        expected = causal(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, ids.shape[1], len(tokenizer))
    assert torch.allclose(logits, expected, atol=1e-5)
    # tied embeddings: the head is the backbone's own embedding, trained with it
    assert model.lm_head.weight is model.model.get_input_embeddings().weight


def test_lm_logits_without_the_head_is_a_user_error(tiny_model_dir):
    model = RewardModel.from_pretrained(tiny_model_dir)
    with pytest.raises(RlhfkitError, match="with_lm_head=True"):
        model.lm_logits(torch.zeros(1, 2, model.model.config.hidden_size))


def test_a_critic_from_an_ensemble_starts_at_the_ensembles_mean_reward(
    tiny_model_dir, tokenizer, tmp_path
):
    ensemble = RewardModel.from_pretrained(tiny_model_dir, num_heads=3)
    with torch.no_grad():
        for p in ensemble.model.score.parameters():
            p.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    ensemble.save_pretrained(tmp_path / "rm")
    ids, mask = encode(
        tokenizer, ["User: hi\nAssistant: hello", "User: tips?\nAssistant: sleep early"]
    )
    critic = value_model_from(tmp_path / "rm")
    assert critic.num_heads == 1
    with torch.no_grad():
        expected = ensemble(ids, mask).rewards.mean(dim=-1, keepdim=True)
        assert torch.allclose(critic(ids, mask).rewards, expected, atol=1e-5)
    # from a causal LM: a fresh single head; from a one-head reward model: that model itself
    assert value_model_from(tiny_model_dir).num_heads == 1


def test_a_process_reward_model_says_so_in_its_config_and_starts_no_critic(
    tiny_model_dir, tmp_path
):
    prm = RewardModel.from_pretrained(tiny_model_dir)
    assert not is_process_reward_model(prm.config)  # unmarked, as a model saved before
    mark_objective(prm, "process")
    prm.save_pretrained(tmp_path / "prm")
    saved = json.loads((tmp_path / "prm" / "config.json").read_text())
    assert saved["rlhfkit_reward_objective"] == "process"
    assert is_process_reward_model(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "prm").config
    )
    # PPO's critic would read its value at the EOS, where the model never learnt a score
    with pytest.raises(RlhfkitError, match="critic_init=reward_model.*is a process reward model"):
        value_model_from(tmp_path / "prm")
    # training it further (rm objective=process) loads it
    assert RewardModel.from_pretrained(tmp_path / "prm").num_heads == 1


def test_shared_prefix_rewards_equal_the_plain_forward_with_the_same_gradients(tiny_model_dir):
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=2, with_lm_head=False)
    # two prompts, two responses each: the first pair's shorter answer is a prefix of the longer,
    # the second pair's answers share their first token
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [10, 11, 14, 15], [16, 20], [16, 18, 19]]
    rows = [prompts[k // 2] + responses[k] for k in range(4)]
    width = max(map(len, rows))
    ids = torch.full((4, width), model.model.config.pad_token_id or 0)
    mask, response_mask = (
        torch.zeros(4, width, dtype=torch.long),
        torch.zeros(4, width, dtype=torch.bool),
    )
    for k, row in enumerate(rows):
        ids[k, : len(row)], mask[k, : len(row)] = torch.tensor(row), 1
        response_mask[k, len(prompts[k // 2]) : len(row)] = True

    def rewards_and_grads(**kwargs):
        rewards = model.rewards_by_length(ids, mask, **kwargs)
        (rewards * torch.tensor([[1.0, -2.0]])).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return rewards.detach(), grads

    plain, plain_grads = rewards_and_grads()
    shared, shared_grads = rewards_and_grads(response_mask=response_mask, group_size=2)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(shared_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # groups of 4 would mix two prompts: the plain forward answers, unchanged
    torch.testing.assert_close(
        model.rewards_by_length(ids, mask, response_mask=response_mask, group_size=4),
        plain,
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "name",
    ["no-weights", "config-not-json", "unknown-model-type", "truncated-weights", "pickle-weights"],
)
def test_a_broken_reward_model_directory_is_one_line_naming_it(name, tiny_model_dir, tmp_path):
    breaks, fault = BROKEN_MODELS[name]
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    RewardModel.from_pretrained(model_dir).save_pretrained(model_dir)
    breaks(model_dir)
    for load in (RewardModel.from_pretrained, value_model_from):
        with pytest.raises(RlhfkitError) as caught:
            load(model_dir)
        message = str(caught.value)
        assert message.startswith(f"model directory {model_dir}: ") and fault in message
        assert len(message.splitlines()) == 1
    assert not (model_dir / "unpickled").exists()
