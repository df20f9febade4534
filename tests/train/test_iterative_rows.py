"""The ranking rows of iterative GRPO: replay shares, pairs as rankings, labelled samples."""

import random

import pytest

from rlhfkit.data.formats import PreferenceExample, PromptExample, RankingExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.train.iterative_rows import as_ranking_row, ranked_rows, replay_rows, reward_history

from .test_reward import write_jsonl


def test_replay_makes_up_the_asked_share_of_the_mix():
    history = [{"i": i} for i in range(100)]
    new = [{"n": i} for i in range(90)]
    rng = random.Random(0)
    assert len(replay_rows(new, history, 0.1, rng)) == 10  # 10 / (90 + 10) = 10%
    assert len(replay_rows(new, history, 0.25, rng)) == 30  # 30 / 120
    assert replay_rows(new, history, 0.0, rng) == []
    assert (
        len(replay_rows(new, history[:4], 0.1, rng)) == 4
    )  # history shorter than the share: all of it
    drawn = replay_rows(new, history, 0.5, rng)
    assert len(drawn) == 90 and len({row["i"] for row in drawn}) == 90  # without repeats


def test_replayed_pairs_become_rankings_of_two(tmp_path):
    pair = PreferenceExample("p", "good", "bad", 1.0)
    assert as_ranking_row(pair) == {"prompt": "p", "responses": ["good", "bad"]}
    ranking = RankingExample("p", ("a", "b", "c"), (0, 1, 1))
    assert as_ranking_row(ranking) == {
        "prompt": "p",
        "responses": ["a", "b", "c"],
        "ranks": [0, 1, 1],
    }
    implicit = write_jsonl(
        tmp_path / "pairs.jsonl", [{"chosen": "Q? A: yes", "rejected": "Q? A: no"}]
    )
    assert reward_history(implicit) == [{"prompt": "Q? A:", "responses": [" yes", " no"]}]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "p", "responses": ["only one"]}], r"pairs.jsonl: row 1: field 'responses'"),
        ([{"prompt": "p", "completion": " c"}], r"pairs.jsonl: reward_data needs .* found sft"),
    ],
)
def test_bad_reward_data_is_named_in_the_users_file(tmp_path, rows, message):
    with pytest.raises(RlhfkitError, match=message):
        reward_history(write_jsonl(tmp_path / "pairs.jsonl", rows))


def test_ranked_rows_keep_ties_and_drop_prompts_without_a_preference():
    questions = [PromptExample(prompt=f"Q{i}", answer=None, metadata={}) for i in range(5)]
    texts = [["b", "a", "c"], ["x", "y", "z"], ["p", "q"], ["ok", "  "], [" ", "u", "v"]]
    rankings = [(1, 0, 2), (0, 0, 1), None, (0, 1), (0, 1, 1)]
    assert ranked_rows(questions, texts, rankings) == [
        {"prompt": "Q0", "responses": ["a", "b", "c"]},  # a strict order needs no ranks
        {"prompt": "Q1", "responses": ["x", "y", "z"], "ranks": [0, 0, 1]},
    ]  # Q2: no preference; Q3: one response left; Q4: the two left are tied
