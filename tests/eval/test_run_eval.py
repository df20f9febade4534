import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

import rlhfkit
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval.run_eval import (
    EvalConfig,
    check_eval_keys,
    check_same_tokenizer,
    load_heldout_groups,
    report_title,
    reward_model_accuracy,
)
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.runtime.device import Precision

# the score each response text gets: Beta and Gamma tie
SCORES = {" Alpha.": 3.0, " Beta.": 1.0, " Gamma.": 1.0, " Delta.": 2.0}


class TextScorer(nn.Module):
    """A two-head reward model scoring a row by the response it ends with: heads s - 1 and
    s + 1, whose mean is the table's score s."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.anchor = nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def rewards_by_length(self, input_ids, attention_mask):
        texts = [
            self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            for ids, mask in zip(input_ids, attention_mask)
        ]
        self.autocast = torch.is_autocast_enabled(self.device.type)
        scores = [next(s for end, s in SCORES.items() if text.endswith(end)) for text in texts]
        return torch.tensor([[s - 1.0, s + 1.0] for s in scores])


def test_reward_model_accuracy_counts_ties_half_and_a_rankings_pairs_as_correlated(
    tiny_model_dir, tmp_path
):
    rows = [
        # Alpha > Beta right, Alpha > Gamma right, Beta = Gamma in score: 1/2
        {
            "prompt": "Q: one?\nA:",
            "responses": [" Alpha.", " Beta.", " Gamma."],
            "ranks": [0, 1, 2],
        },
        # Alpha > Delta right
        {"prompt": "Q: two?\nA:", "responses": [" Alpha.", " Delta."], "ranks": [0, 1]},
        # Beta = Gamma in score: 1/2; Beta < Delta wrong; Gamma and Delta tie in the label: no pair
        {
            "prompt": "Q: three?\nA:",
            "responses": [" Beta.", " Gamma.", " Delta."],
            "ranks": [0, 1, 1],
        },
    ]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    proxy = SimpleNamespace(
        model=TextScorer(tokenizer),
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
        precision=Precision.FP32,
    )
    groups = load_heldout_groups(proxy, str(path), max_length=64)
    result = reward_model_accuracy(proxy, str(path), groups, batch_size=2)
    # 3 wins + 2 ties of 6 pairs: p = 4 / 6. Outcomes by ranking [1, 1, .5], [1], [.5, 0]:
    # deviations from p summed per ranking 1/2, 1/3, -5/6, squared 38/36; one by one 30/36;
    # the pairs count as n = 6 * 30 / 38 = 4.7368 (`effective_count`), and Wilson with
    # z = 1.96 there: centre 0.592031, half-width 0.324167 (0.300, 0.903 at n = 6)
    assert result["pairs"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["accuracy_low"] == pytest.approx(0.267865, abs=1e-5)
    assert result["accuracy_high"] == pytest.approx(0.916198, abs=1e-5)
    assert result["heldout_pairs"] == str(path)


def test_reward_model_accuracy_scores_in_the_proxys_precision(tiny_model_dir, tmp_path):
    """eval precision=bf16: the reward model's held-out accuracy is scored under bf16 autocast,
    as its proxy scores are (docs/evaluation.md), not in float32."""
    rows = [{"prompt": "Q: two?\nA:", "responses": [" Alpha.", " Delta."], "ranks": [0, 1]}]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for precision, expected in ((Precision.BF16, True), (Precision.FP32, False)):
        scorer = TextScorer(tokenizer)
        proxy = SimpleNamespace(
            model=scorer,
            tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id,
            precision=precision,
        )
        groups = load_heldout_groups(proxy, str(path), 64)
        assert reward_model_accuracy(proxy, str(path), groups, 2)["accuracy"] == 1.0
        assert scorer.autocast is expected, precision


def test_eval_refuses_a_model_whose_tokenizer_is_not_the_baselines(
    tiny_model_dir, tiny_sizes, tmp_path
):
    # the same model size, a tokenizer trained on other texts: the baseline's ids would stand for
    # other tokens in it, or lie past its embedding table (an IndexError deep in torch)
    other = build_tiny_model(
        tmp_path / "other", ["Lorem ipsum dolor sit amet, consectetur."] * 20, seed=0, **tiny_sizes
    )
    refused = re.escape(f"{other}: its tokenizer is not {tiny_model_dir}'s")
    with pytest.raises(RlhfkitError, match=refused):
        rlhfkit.run(
            "eval",
            tmp_path / "ev",
            models=[other],
            baseline=tiny_model_dir,
            task="arith",
            num_prompts=2,
            samples_per_prompt=1,
            max_new_tokens=4,
        )
    assert not (tmp_path / "ev").exists()  # refused before anything ran
    # the baseline's own tokenizer, as every checkpoint trained from it has, passes
    shutil.copytree(tiny_model_dir, tmp_path / "copy")
    check_same_tokenizer(load_tokenizer(tiny_model_dir), "baseline", [str(tmp_path / "copy")])


def test_the_title_without_a_baseline_says_there_are_no_win_rates():
    cfg = EvalConfig(models=["runs/ppo/final"], task="arith")
    assert report_title(cfg) == "arith: judged by gold (no baseline: no win rates)"
    with_baseline = EvalConfig(models=["runs/ppo/final"], baseline="runs/sft/final", task="arith")
    assert report_title(with_baseline) == "arith: win rates against runs/sft/final judged by gold"


def test_eval_refuses_num_prompts_beside_a_prompt_file(tiny_model_dir, tmp_path):
    """Every row of `prompts` is evaluated: a num_prompts beside it would change nothing,
    silently; it is refused by name, as `rlhfkit critique` refuses it beside prompts_data."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Q: 1 + 1?\nA:", "answer": 2}) + "\n")
    refused = re.escape(
        f"num_prompts=50 is read only without prompts (prompts drawn from the task); "
        f"every row of prompts={prompts} is used: cut the file to take fewer"
    )
    with pytest.raises(RlhfkitError, match=refused):
        rlhfkit.run(
            "eval",
            tmp_path / "ev",
            models=[tiny_model_dir],
            task="arith",
            prompts=prompts,
            num_prompts=50,
        )
    assert not (tmp_path / "ev").exists()  # refused before anything ran
    # at its default it stands for no choice: the file alone decides
    check_eval_keys(EvalConfig(models=["m"], prompts=str(prompts)))


def test_one_distinct_prompt_gives_intervals_that_are_absent_not_zero_wide(
    tiny_model_dir, tmp_path
):
    # one prompt's samples cannot say how other prompts would score: eval.json holds null
    # bounds and the report "[-]", where "KL/sequence 9.662 [9.662, 9.662]" read as certainty
    prompts = tmp_path / "one_arith.jsonl"
    prompts.write_text(json.dumps({"prompt": "Q: 1 + 1?\nA:", "answer": "2"}) + "\n")
    result = rlhfkit.run(
        "eval",
        tmp_path / "ev",
        models=[tiny_model_dir],
        baseline=tiny_model_dir,
        task="arith",
        prompts=prompts,
        samples_per_prompt=2,
        max_new_tokens=4,
        progress=False,
    )
    m = json.loads((tmp_path / "ev" / "eval.json").read_text())["models"][str(tiny_model_dir)]
    for key in ("gold_sampled", "kl_k1_per_sequence", "kl_k3_per_sequence"):
        assert m[f"{key}_low"] is None and m[f"{key}_high"] is None, key
        assert m[f"{key}_n"] == 2 and m[key] is not None
    assert result["models"][str(tiny_model_dir)]["gold_sampled_low"] is None
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| KL/sequence k1 [95%] | 0.000 [-] |" in report
