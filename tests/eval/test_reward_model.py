import pytest
import torch
from transformers import AutoTokenizer

from rlhfkit.data.ranking_batch import RankedGroup
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.eval.reward_model import pair_accuracy, score_groups
from rlhfkit.models.reward import RewardModel


def group(ranks, responses=None):
    return RankedGroup(responses or [], tuple(ranks))


def test_pair_accuracy_hand_values():
    groups = [group([0, 1, 2]), group([0, 1])]
    # group 0: pairs (0,1) right, (0,2) right, (1,2) wrong; group 1: (0,1) wrong
    scores = [torch.tensor([3.0, 2.0, 2.5]), torch.tensor([0.0, 1.0])]
    assert pair_accuracy(scores, groups) == pytest.approx(2 / 4)


def test_ties_in_the_label_are_skipped_and_tied_scores_count_half():
    groups = [group([0, 1, 1])]  # pairs (0,1), (0,2); (1,2) is a tie in the label
    assert pair_accuracy([torch.tensor([1.0, 0.0, 5.0])], groups) == pytest.approx(1 / 2)
    assert pair_accuracy([torch.tensor([1.0, 1.0, 0.0])], groups) == pytest.approx((0.5 + 1.0) / 2)
    assert (
        pair_accuracy([torch.tensor([0.0, 0.0, 0.0])], [group([0, 0, 0])]) == 0.0
    )  # no pairs at all


def test_score_groups_matches_scoring_each_response_alone(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=3)
    torch.nn.init.normal_(model.model.score.weight)
    texts = [
        [
            "User: Hi\nAssistant: Good luck!",
            "User: Hi\nAssistant: Great question. Be patient and stay calm.",
        ],
        ["Q: 1 + 2?\nA: 3.", "Q: 1 + 2?\nA: 4.", "Q: 1 + 2?\nA:"],
    ]
    encoded = [
        [
            EncodedExample(
                tokenizer(t)["input_ids"], [False] * len(tokenizer(t)["input_ids"]), False
            )
            for t in g
        ]
        for g in texts
    ]
    groups = [RankedGroup(g, tuple(range(len(g)))) for g in encoded]
    model.train()
    scores = score_groups(model, groups, tokenizer.pad_token_id, batch_size=1)
    assert model.training  # the mode is restored
    assert [s.shape for s in scores] == [(2,), (3,)]
    with torch.no_grad():
        for g, group_scores in zip(encoded, scores):
            for response, score in zip(g, group_scores):
                ids = torch.tensor([response.input_ids])
                alone = model.eval()(ids, torch.ones_like(ids)).rewards.mean()
                assert score.item() == pytest.approx(alone.item(), abs=1e-5)
