import json

import pytest
import torch

from rlhfkit.data.ranking_batch import (
    RankedGroup,
    collate_groups,
    load_ranked_groups,
    ranking_layout,
)
from rlhfkit.data.tokenize import EncodedExample, encode_prompt_completion
from rlhfkit.errors import RlhfkitError


def response(token: int, length: int) -> EncodedExample:
    return EncodedExample([token] * length, [False] + [True] * (length - 1), truncated=False)


def test_ranking_layout_indexes_the_flat_responses_group_by_group():
    groups = [
        RankedGroup([response(1, 3), response(2, 2)], (0, 1)),
        RankedGroup([response(3, 2), response(4, 4), response(5, 2)], (0, 0, 1)),
    ]
    layout = ranking_layout(groups)
    assert layout["ranking_index"].tolist() == [[0, 1, 0], [2, 3, 4]]
    assert layout["ranking_ranks"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert layout["ranking_mask"].tolist() == [[True, True, False], [True, True, True]]
    # the index finds each response in the batch that collate_groups pads
    first_tokens = collate_groups(groups, pad_token_id=0)["input_ids"][:, 0]
    assert torch.equal(first_tokens[layout["ranking_index"]], torch.tensor([[1, 2, 1], [3, 4, 5]]))


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_pairs_and_rankings_load_as_ranked_groups(tokenizer, tmp_path):
    settings = dict(max_length=64, truncation="keep_start", needed_by="DPO")
    pairs = write_rows(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "what is two", "chosen": " three", "rejected": " the cat", "margin": 2.0},
            {"prompt": "the cat", "chosen": " sat", "rejected": " on a mat"},
        ],
    )
    groups, report = load_ranked_groups(pairs, tokenizer, **settings)
    # a pair is a ranking of two, chosen first, with its margin
    assert [(group.ranks, group.margin) for group in groups] == [((0, 1), 2.0), ((0, 1), 0.0)]
    want = encode_prompt_completion(
        tokenizer, "what is two", " the cat", max_length=64, truncation="keep_start"
    )
    assert groups[0].responses[1] == want and report.kept == 2
    rankings = write_rows(
        tmp_path / "rankings.jsonl",
        [
            {"prompt": "what is", "responses": [" two", " three", " a cat"], "ranks": [0, 1, 1]},
        ],
    )
    groups, report = load_ranked_groups(rankings, tokenizer, **settings)
    assert len(groups) == 1 and groups[0].ranks == (0, 1, 1) and len(groups[0].responses) == 3


def test_other_data_and_rows_without_a_preference_are_refused(tokenizer, tmp_path):
    settings = dict(max_length=64, truncation="keep_start", needed_by="a reward model")
    sft = write_rows(tmp_path / "sft.jsonl", [{"prompt": "what is", "completion": " two"}])
    with pytest.raises(RlhfkitError, match="a reward model needs preference pairs.*found sft data"):
        load_ranked_groups(sft, tokenizer, **settings)
    steps = write_rows(
        tmp_path / "steps.jsonl", [{"prompt": "p", "completions": ["a", "b"], "labels": [1, 0]}]
    )
    with pytest.raises(RlhfkitError, match="found steps data .*rlhfkit rm objective=process"):
        load_ranked_groups(steps, tokenizer, **settings)
    ties = write_rows(
        tmp_path / "ties.jsonl",
        [
            {"prompt": "what is", "responses": [" two", " three"], "ranks": [0, 0]},
        ],
    )
    with pytest.raises(RlhfkitError, match="nothing to prefer"):
        load_ranked_groups(ties, tokenizer, **settings)


def test_contradictory_rows_are_dropped_and_named_in_the_report(tokenizer, tmp_path):
    settings = dict(max_length=64, truncation="keep_start", needed_by="DPO")
    same = {"prompt": "what is two", "chosen": " three", "rejected": " three"}
    good = {"prompt": "what is two", "chosen": " three", "rejected": " the cat"}
    pairs = write_rows(tmp_path / "pairs.jsonl", [same, good, same, same])
    groups, report = load_ranked_groups(pairs, tokenizer, **settings)
    assert len(groups) == 1 and groups[0].ranks == (0, 1)
    assert report.summary() == "4 rows: 1 kept (0 truncated), 3 dropped (chosen equals rejected: 3)"
    only_same = write_rows(tmp_path / "same.jsonl", [same])
    with pytest.raises(RlhfkitError, match=r"chosen equals rejected: 1\)\): nothing to prefer"):
        load_ranked_groups(only_same, tokenizer, **settings)
