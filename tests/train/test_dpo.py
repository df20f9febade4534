import json
import math
import random
import shutil

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.train.dpo import DPOConfig, check_config, train_dpo

from .test_reward import gold_ranking, write_jsonl


@pytest.fixture(scope="module")
def advice_rankings(tmp_path_factory):
    """Gold-ranked advice replies (K = 4, ties possible), and best-vs-worst pairs of the same."""
    rng = random.Random(0)
    rows = [gold_ranking(p, rng) for p in AdviceTask().prompts(180, rng)]
    pairs = [
        {"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][-1]}
        for r in rows
        if r["ranks"][0] != r["ranks"][-1]
    ]
    folder = tmp_path_factory.mktemp("preferences")
    return {
        "rankings": (
            write_jsonl(folder / "rankings.jsonl", rows[:150]),
            write_jsonl(folder / "eval_rankings.jsonl", rows[150:]),
        ),
        "pairs": (
            write_jsonl(folder / "pairs.jsonl", pairs[:140]),
            write_jsonl(folder / "eval_pairs.jsonl", pairs[140:]),
        ),
        "ranking_rows": rows[:150],
    }


def config(model, data, **overrides) -> DPOConfig:
    train, held_out = data
    settings = dict(
        model=str(model),
        train_data=train,
        eval_data=held_out,
        batch_size=8,
        max_steps=20,
        lr=3e-3,
        warmup_steps=2,
        eval_every=10,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    return DPOConfig(**{**settings, **overrides})


def run_dir(tmp_path, name="run"):
    return prepare_run_dir(tmp_path / name, resume=False, overwrite=False)


def test_dpo_learns_a_preference_set(tiny_model_dir, advice_rankings, tmp_path):
    run = run_dir(tmp_path)
    # 30 steps: the last 10 batches of 8 pairs are noisy, and 20 steps left them at chance plus
    # 0.12 with the fixture's data of 2026-12-07
    result = train_dpo(config(tiny_model_dir, advice_rankings["pairs"], max_steps=30), run)

    history = result.history
    # the policy starts as the reference: every implicit reward is 0, accuracy is chance
    assert history[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-5)
    # (the policy's and the reference's log-probs come from two paths, equal up to rounding)
    assert history[0]["margin"] == pytest.approx(0.0, abs=1e-5) and history[0]["accuracy"] == 0.5
    late = history[-10:]
    assert sum(row["margin"] for row in late) / 10 > 0.5
    assert sum(row["accuracy"] for row in late) / 10 > 0.65
    assert sum(row["loss"] for row in late) / 10 < math.log(2.0) - 0.1
    # held-out pairs, never trained on, are ordered better than chance
    assert [step for step, _ in result.evals] == [10, 20, 30]
    final = result.evals[-1][1]
    assert final["accuracy"] >= 0.65 and final["loss"] < math.log(2.0) - 0.1
    assert final["rewards_chosen"] > final["rewards_rejected"]

    metrics = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [row["step"] for row in metrics] == list(range(1, 31))
    assert {
        "loss",
        "rewards_chosen",
        "rewards_rejected",
        "margin",
        "accuracy",
        "tokens_per_s",
    } <= metrics[0].keys()
    assert metrics[-1]["eval_accuracy"] == final["accuracy"]
    assert AutoModelForCausalLM.from_pretrained(run.final).config.vocab_size == 300


def test_plackett_luce_first_step_loss_with_policy_equal_to_reference(
    tiny_model_dir, advice_rankings, tmp_path
):
    # all implicit rewards are 0, so each response's term is log(size of its choice set): the
    # responses not ranked strictly better (ties included); the step loss is the mean over groups
    cfg = config(
        tiny_model_dir,
        advice_rankings["rankings"],
        loss=DPOLoss.PLACKETT_LUCE,
        max_steps=1,
        batch_size=150,
        eval_data="",
    )
    result = train_dpo(cfg, run_dir(tmp_path))
    rows = advice_rankings["ranking_rows"]
    expected = sum(
        sum(math.log(sum(r >= rank for r in row["ranks"])) for rank in row["ranks"]) for row in rows
    ) / len(rows)
    assert result.train_losses[0] == pytest.approx(expected, rel=1e-5)
    assert result.history[0]["accuracy"] == 0.5


def test_precomputed_reference_equals_the_reference_model(
    tiny_model_dir, advice_rankings, tmp_path
):
    results = {}
    for precompute in (False, True):
        cfg = config(
            tiny_model_dir,
            advice_rankings["rankings"],
            max_steps=2,
            eval_every=0,
            precompute_ref=precompute,
        )
        results[precompute] = train_dpo(cfg, run_dir(tmp_path, f"precompute_{precompute}"))
    # the first step's policy is the reference, so its loss is log 2 either way
    assert results[True].train_losses[0] == pytest.approx(results[False].train_losses[0], abs=1e-5)
    assert results[True].train_losses[0] == pytest.approx(math.log(2.0), abs=1e-5)
    for key in ("loss", "margin", "accuracy"):
        assert results[True].history[1][key] == pytest.approx(
            results[False].history[1][key], abs=1e-4
        )
    assert results[True].evals[-1][1]["loss"] == pytest.approx(
        results[False].evals[-1][1]["loss"], abs=1e-4
    )


def test_lora_uses_the_base_as_reference_and_saves_a_merged_model(
    tiny_model_dir, advice_rankings, tmp_path
):
    run = run_dir(tmp_path)
    cfg = config(
        tiny_model_dir,
        advice_rankings["pairs"],
        max_steps=4,
        eval_every=0,
        lora_r=4,
        lr=1e-2,
        loss=DPOLoss.IPO,
        beta=0.5,
    )
    result = train_dpo(cfg, run)
    # IPO with the policy equal to its reference: (0 - 1 / (2 * 0.5))^2 = 1
    assert result.train_losses[0] == pytest.approx(1.0, abs=1e-5)
    assert abs(result.history[-1]["margin"]) > 1e-3  # far past rounding: the policy moved
    weights = load_file(run.final / "model.safetensors")
    assert not any("lora" in name for name in weights)
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not (weights[name] == start[name]).all() for name in start)


def test_checks_that_say_what_to_change():
    with pytest.raises(ConfigError, match="set label_smoothing=0 or loss=sigmoid"):
        check_config(DPOConfig(loss=DPOLoss.PLACKETT_LUCE, label_smoothing=0.1))
    with pytest.raises(ConfigError, match="loss=ipo"):
        check_config(DPOConfig(loss=DPOLoss.IPO, label_smoothing=0.1))
    with pytest.raises(ConfigError, match=r"\[0, 0.5\)"):
        check_config(DPOConfig(label_smoothing=0.5))
    with pytest.raises(ConfigError, match="beta=0"):
        check_config(DPOConfig(beta=0.0))
    check_config(DPOConfig(label_smoothing=0.2))


@pytest.mark.parametrize(
    "rows, error, fragments",
    [
        (
            [{"prompt": "Q:", "completion": " A."}],
            RlhfkitError,
            ["needs preference pairs", "found sft data"],
        ),
        (
            [{"prompt": "Q:", "chosen": " A.", "rejected": 3}],
            DataError,
            ["row 1", "field 'rejected'", "got int"],
        ),
        (
            [{"prompt": "Q:", "responses": [" A.", " B."], "ranks": [0, 0]}],
            RlhfkitError,
            ["no row left", "different rank"],
        ),
    ],
    ids=["sft-data", "bad-field", "only-ties"],
)
def test_bad_data_is_one_line_naming_the_file(tiny_model_dir, tmp_path, rows, error, fragments):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(error) as caught:
        train_dpo(
            DPOConfig(
                model=str(tiny_model_dir), train_data=data, progress=False, tensorboard=False
            ),
            run_dir(tmp_path),
        )
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and message.startswith(data)
    assert all(fragment in message for fragment in fragments)


def test_max_labels_keeps_the_leading_rows_within_the_budget(
    tiny_model_dir, advice_rankings, tmp_path
):
    # rankings of K = 4 cost C(4,2) = 6 comparisons each, pairs 1: 40 labels buy 6 rankings or
    # 40 pairs
    rankings = train_dpo(
        config(
            tiny_model_dir,
            advice_rankings["rankings"],
            max_steps=1,
            eval_data="",
            max_labels=40,
            batch_size=100,
            loss=DPOLoss.PLACKETT_LUCE,
        ),
        run_dir(tmp_path, "r"),
    )
    pairs = train_dpo(
        config(tiny_model_dir, advice_rankings["pairs"], max_steps=1, eval_data="", max_labels=40),
        run_dir(tmp_path, "p"),
    )
    assert rankings.labels == 36 and pairs.labels == 40
    # one step over every kept ranking: the mean loss is that of the first six rows alone
    rows = advice_rankings["ranking_rows"][:6]
    expected = (
        sum(
            sum(math.log(sum(r >= rank for r in row["ranks"])) for rank in row["ranks"])
            for row in rows
        )
        / 6
    )
    assert rankings.train_losses[0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="max_labels=5 buys no row"):
        train_dpo(
            config(tiny_model_dir, advice_rankings["rankings"], max_labels=5),
            run_dir(tmp_path, "none"),
        )


def test_pairs_run_their_prompt_once_with_the_plain_log_probs_and_gradients(tiny_model_dir):
    import torch

    from rlhfkit.models.loading import load_causal_lm
    from rlhfkit.objectives.logprobs import sequence_logprobs
    from rlhfkit.runtime.device import Precision
    from rlhfkit.train.dpo_losses import policy_logprobs

    model = load_causal_lm(tiny_model_dir)
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15], [16, 2], [17, 18, 19]]
    rows = [prompts[k // 2] + responses[k] for k in range(4)]
    width = max(map(len, rows))
    ids, mask = torch.zeros(4, width, dtype=torch.long), torch.zeros(4, width, dtype=torch.long)
    response_mask = torch.zeros(4, width, dtype=torch.bool)
    for k, row in enumerate(rows):
        ids[k, : len(row)], mask[k, : len(row)] = torch.tensor(row), 1
        response_mask[k, len(prompts[k // 2]) : len(row)] = True
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "response_mask": response_mask,
        "best": torch.tensor([0, 2]),
    }

    def with_grads(fn):
        values = fn()
        (values * torch.tensor([1.0, -1.0, 0.5, 2.0])).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return values.detach(), grads

    plain, plain_grads = with_grads(
        lambda: sequence_logprobs(
            model(input_ids=ids, attention_mask=mask).logits, ids, response_mask
        )
    )
    shared, shared_grads = with_grads(lambda: policy_logprobs(model, batch, Precision.FP32))
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(shared_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_first_step_loss_is_log_2_with_a_dropout_model(
    tiny_model_dir, advice_rankings, tmp_path
):
    # dropout would make the policy's log-probs differ from the reference's at step 1
    model_dir = tmp_path / "dropout_model"
    shutil.copytree(tiny_model_dir, model_dir)
    settings = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**settings, "attention_dropout": 0.5}))
    losses = {}
    for disable in (True, False):
        cfg = config(model_dir, advice_rankings["pairs"], max_steps=1, disable_dropout=disable)
        losses[disable] = train_dpo(cfg, run_dir(tmp_path, f"d{disable}")).history[0]["loss"]
    assert losses[True] == pytest.approx(math.log(2.0), abs=1e-5)
    assert abs(losses[False] - math.log(2.0)) > 1e-3
