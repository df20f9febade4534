import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from rlhfkit.eval.run_eval import reward_model_accuracy

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
        scores = [next(s for end, s in SCORES.items() if text.endswith(end)) for text in texts]
        return torch.tensor([[s - 1.0, s + 1.0] for s in scores])


def test_reward_model_accuracy_counts_score_ties_half_with_a_wilson_interval(
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
        model=TextScorer(tokenizer), tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id
    )
    result = reward_model_accuracy(proxy, str(path), max_length=64, batch_size=2)
    # 3 wins + 2 ties of 6 pairs: 4 / 6; Wilson with z = 1.96 at p = 2/3, n = 6:
    # centre (p + z^2/12) / (1 + z^2/6) = 0.601611, half-width 0.301618
    assert result["pairs"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["accuracy_low"] == pytest.approx(0.299993, abs=1e-5)
    assert result["accuracy_high"] == pytest.approx(0.903229, abs=1e-5)
    assert result["heldout_pairs"] == str(path)
